"""Decode steps that attend straight from the packed cache through the GPU kernels.

The generic path of :class:`~kvstack.hf.cache.CompressedLayer` decodes every stored row
back to the model's dtype at every step, pads ragged heads and hands transformers a
dense tensor: exact, but on a GPU it moves more bytes than a plain fp16 cache. When a
layer is in a shape the kernels read (one compressed segment of packed INT8/4/2 or
dense rows, full attention, no trimming during decode) and the step has few query rows,
the layer hands the attention hook a :class:`FastStep` instead, and the hook calls
:func:`kvstack.kernels.decode_attention` on the packed rows and the dense tail of new
tokens. Anything else - CPU, sliding windows, softcapping, decode budgets, KIVI decode
blocks, long query chunks - takes the generic path, whose numbers the kernels are
tested against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kvstack import kernels
from kvstack.kernels.layout import PackedRows, Segments
from kvstack.kv import DenseRows

# Query rows (query heads of one KV head x new tokens) one kernel program holds: more than
# this and a decode step is really a prefill chunk, which the generic path does better.
MAX_QUERY_ROWS = 64


def kernel_rows(enc, dtype: torch.dtype) -> PackedRows | torch.Tensor | None:
    """The rows of one encoding as kernel input, or None when the kernels cannot read it."""
    from kvstack.stages.quant_rows import QuantRows

    if isinstance(enc, DenseRows):
        return enc.data if enc.data.dtype == dtype else None
    if type(enc) is QuantRows and enc.bits in kernels.KERNEL_BITS:
        return PackedRows.from_quant_rows(enc)
    return None


@dataclass
class FastStep:
    """One layer's step, ready for the kernel (``attend``) or for the generic path (``materialize``)."""

    layer: Any  # CompressedLayer (its state does not change between update and attention)
    query_pos: torch.Tensor
    keys: PackedRows | torch.Tensor
    values: PackedRows | torch.Tensor
    segments: Segments

    def attend(self, module, query: torch.Tensor, kwargs: dict) -> torch.Tensor | None:
        """``[1, q, Hq, D]`` attention output (transformers' layout), or None if this call can't use it."""
        if getattr(getattr(module, "config", None), "attn_logit_softcapping", None):
            return None
        _, hq, qn, d = query.shape
        h = self.segments.count
        if hq % h or (hq // h) * qn > MAX_QUERY_ROWS or kwargs.get("dropout", 0.0):
            return None
        tk, tv = self.layer.tail_k, self.layer.tail_v
        t = tk.shape[1]
        dev = tk.device
        tail = Segments(
            torch.arange(h, device=dev, dtype=torch.int32) * t, torch.full((h,), t, device=dev, dtype=torch.int32),
            torch.zeros(h, device=dev, dtype=torch.int32), t, h * t,
        )
        q = query[0].reshape(h, (hq // h) * qn, d)
        out = kernels.decode_attention(
            q, self.keys, self.values, self.segments, tk.reshape(h * t, d), tv.reshape(h * t, d), tail,
            scale=kwargs.get("scaling"), query_tokens=qn,
        )
        return out.view(1, hq, qn, d).transpose(1, 2).contiguous()

    def materialize(self):
        """Dense keys, values and row metadata, as the generic path returns them."""
        return self.layer._materialize(self.query_pos)


def plan_step(layer, query_pos: torch.Tensor) -> FastStep | None:
    """A :class:`FastStep` for this decode step of ``layer``, or None to take the generic path."""
    if layer.tail_k is None or layer.window is not None or not (layer.tail_k.is_cuda or kernels.ALLOW_CPU):
        return None
    base = layer.base
    if len(layer.segments) != 1 or base.meta.get("decode_budget") or base.meta.get("decode_quantize"):
        return None
    cached = getattr(layer, "_fast_rows", None)
    if cached is None or cached[0] is not base:
        keys, values = kernel_rows(base.keys, layer.dtype), kernel_rows(base.values, layer.dtype)
        seg = None
        if keys is not None and values is not None:
            groups = {x.group for x in (keys, values) if isinstance(x, PackedRows) and x.axis == "channel"}
            if len(groups) <= 1:
                seg = Segments.from_lengths(base.lengths, groups.pop() if groups else 0, device=layer.tail_k.device)
        dim = layer.tail_k.shape[-1]
        ok = seg is not None and all(
            kernels.uses_kernels(layer.tail_k.device, dim, *(
                (x.bits, x.group, x.axis) if isinstance(x, PackedRows) else (16, 1, "token")), attention=True)
            for x in (keys, values)
        )
        cached = (base, (keys, values, seg) if ok else None)
        layer._fast_rows = cached
    if cached[1] is None:
        return None
    keys, values, seg = cached[1]
    return FastStep(layer, query_pos, keys, values, seg)
