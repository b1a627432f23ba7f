"""Decode steps that attend straight from the packed cache through the GPU kernels.

The generic path of :class:`~kvstack.hf.cache.CompressedLayer` decodes every stored row
back to the model's dtype at every step, pads ragged heads and hands transformers a
dense tensor: exact, but on a GPU it moves more bytes than a plain fp16 cache. When a
layer is in a shape the kernels read (one compressed segment of packed INT8/4/2 or
dense rows, full attention, no trimming during decode) and the step has few query rows,
the layer hands the attention hook a :class:`FastStep` instead, and the hook runs the
layer's :class:`~kvstack.kernels.triton_decode.DecodePlan` (made once, kept across steps)
on the packed rows and the dense tail of new tokens: two launches a layer, no tables
built and no value read back per step. Anything else - CPU, sliding windows, softcapping, decode budgets, KIVI decode
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
    from kvstack.rows.quant import QuantRows

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
    plan: Any  # kvstack.kernels.triton_decode.DecodePlan, kept on the layer across steps

    def attend(self, module, query: torch.Tensor, kwargs: dict) -> torch.Tensor | None:
        """``[1, q, Hq, D]`` attention output (transformers' layout), or None if this call can't use it.

        The dense tail ``[H, t, D]`` goes to the kernel as it is (no per-step tables), and
        nothing here reads a value back from the device.
        """
        _, hq, qn, d = query.shape
        h = self.plan.segments.count
        if hq % h or (hq // h) * qn > MAX_QUERY_ROWS or kwargs.get("dropout", 0.0):
            return None
        if getattr(getattr(module, "config", None), "attn_logit_softcapping", None):
            return None
        out = self.plan(query.reshape(h, (hq // h) * qn, d), self.layer.tail_k, self.layer.tail_v,
                        scale=kwargs.get("scaling"), query_tokens=qn)
        if qn == 1:  # [S, M, D] is already [1, 1, Hq, D]
            return out.view(1, 1, hq, d)
        return out.view(1, hq, qn, d).transpose(1, 2).contiguous()

    def materialize(self):
        """Dense keys, values and row metadata, as the generic path returns them."""
        return self.layer._materialize(self.query_pos)


def _decode_plan(base, dtype: torch.dtype, tail: torch.Tensor):
    """The kernel plan for ``base``'s rows (``tail``: the dense new rows), or None if the kernels can't read them."""
    keys, values = kernel_rows(base.keys, dtype), kernel_rows(base.values, dtype)
    if keys is None or values is None:
        return None
    groups = {x.group for x in (keys, values) if isinstance(x, PackedRows) and x.axis == "channel"}
    if len(groups) > 1:
        return None
    device, dim = tail.device, tail.shape[-1]
    if not all(kernels.uses_kernels(device, dim, *(
            (x.bits, x.group, x.axis) if isinstance(x, PackedRows) else (16, 1, "token")), attention=True)
            for x in (keys, values)):
        return None
    from kvstack.kernels.triton_decode import DecodePlan

    segments = Segments.from_lengths(base.lengths, groups.pop() if groups else 0, device=device)
    return DecodePlan(keys, values, segments)


def plan_step(layer, query_pos: torch.Tensor) -> FastStep | None:
    """A :class:`FastStep` for this decode step of ``layer``, or None to take the generic path.

    The plan is built on the layer's first step and kept while its compressed rows stay
    the same object (trimming or re-selecting replaces them, and a new plan is made).
    """
    if layer.tail_k is None or layer.window is not None or not (layer.tail_k.is_cuda or kernels.ALLOW_CPU):
        return None
    base = layer.base
    if len(layer.segments) != 1 or base.meta.get("decode_budget") or base.meta.get("decode_quantize"):
        return None
    cached = getattr(layer, "_fast_plan", None)
    if cached is None or cached[0] is not base:
        cached = (base, _decode_plan(base, layer.dtype, layer.tail_k))
        layer._fast_plan = cached
    return None if cached[1] is None else FastStep(layer, query_pos, cached[1])
