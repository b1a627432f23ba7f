"""Decode steps that attend straight from the packed cache through the GPU kernels.

The generic path of :class:`~kvstack.hf.cache.CompressedLayer` decodes every stored row
back to the model's dtype at every step, pads ragged heads and hands transformers a
dense tensor: exact, but on a GPU it moves more bytes than a plain fp16 cache. When a
layer is in a shape the kernels read (one compressed segment of packed INT8/4/2 or
dense rows, rotated or not, full attention, no trimming during decode) and the step has
few query rows, the layer hands the attention hook a :class:`FastStep` instead, and the
hook runs the layer's :class:`~kvstack.kernels.triton_decode.DecodePlan` (made once, kept
across steps) on the packed rows and the :class:`~kvstack.hf.decode_tail.DecodeTail` of
new tokens: two launches a layer, no tables built and no value read back per step.

Rotated rows (``int4``'s default ``rot``: ``R x`` stored for every key and value ``x``) are
read in the rotated basis: ``q . k = (R q) . (R k)``, so the query is rotated by the keys'
``R``; the output ``sum p v = R^T sum p (R v)`` is un-rotated once by the values' ``R``; new
tokens enter the tail rotated. A batch of B sequences is one plan over B x KV-heads
segments (their packed rows concatenated once per generation, ragged, no padding).

Anything else - CPU, sliding windows, softcapping, decode budgets, KIVI decode blocks,
long query chunks - takes the generic path, whose numbers the kernels are tested against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kvstack import kernels
from kvstack.hf.decode_tail import DecodeTail
from kvstack.kernels.layout import PackedRows, Segments
from kvstack.kv import DenseRows

# Query rows (query heads of one KV head x new tokens) one kernel program holds: more than
# this and a decode step is really a prefill chunk, which the generic path does better.
MAX_QUERY_ROWS = 64


def kernel_rows(enc, dtype: torch.dtype) -> tuple[PackedRows | torch.Tensor, int | None] | None:
    """``(rows as kernel input, seed of their rotation or None)``, or None when the kernels cannot read them."""
    from kvstack.rows.quant import QuantRows
    from kvstack.rows.rotate import HadamardRows

    seed = None
    if type(enc) is HadamardRows:
        seed, enc = enc.seed, enc.inner
    if isinstance(enc, DenseRows):
        return (enc.data, seed) if enc.data.dtype == dtype else None
    if type(enc) is QuantRows and enc.bits in kernels.KERNEL_BITS:
        return PackedRows.from_quant_rows(enc), seed
    return None


def _format(x: PackedRows | torch.Tensor) -> tuple:
    if isinstance(x, torch.Tensor):
        return ("dense", x.dtype, x.shape[-1])
    return ("packed", x.bits, x.group, x.axis, x.dim, x.zeros is None, x.codes.device)


def _concat(parts: list[PackedRows | torch.Tensor]) -> PackedRows | torch.Tensor:
    """One sequence's rows as they are; several sequences' rows end to end (one copy, ragged)."""
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)
    p = parts[0]
    zeros = None if p.zeros is None else torch.cat([x.zeros for x in parts])
    return PackedRows(torch.cat([x.codes for x in parts]), torch.cat([x.scales for x in parts]), zeros,
                      p.bits, p.group, p.axis, p.dim)


@dataclass
class KernelPlan:
    """One layer's kernel launch over ``sequences`` x ``heads`` segments, and the bases of its rows."""

    plan: Any  # kvstack.kernels.triton_decode.DecodePlan
    dim: int
    sequences: int
    heads: int
    key_seed: int | None  # rotation seed of the stored keys / values (None: stored as they are)
    value_seed: int | None

    def rotations(self, device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        from kvstack.rows.rotate import rotation

        dim = self.dim
        rot = lambda seed: None if seed is None else rotation(dim, seed, torch.float32, device)
        return rot(self.key_seed), rot(self.value_seed)

    def new_tail(self, dtype: torch.dtype, device) -> DecodeTail:
        key_rot, value_rot = self.rotations(device)
        return DecodeTail(self.sequences, self.heads, self.dim, dtype, device, key_rot, value_rot,
                          seeds=(self.key_seed, self.value_seed))


def kernel_plan(bases: list, dtype: torch.dtype, device: torch.device) -> KernelPlan | None:
    """The kernel plan for one layer of B sequences (``bases``: their compressed ``KVLayer``), or None.

    None when the kernels cannot read the rows on ``device``, or when the sequences' rows differ
    in format (bits, groups, rotation), which one launch cannot mix.
    """
    read = [(kernel_rows(b.keys, dtype), kernel_rows(b.values, dtype)) for b in bases]
    if any(k is None or v is None for k, v in read):
        return None
    first = read[0]
    for k, v in read[1:]:
        if (_format(k[0]), k[1], _format(v[0]), v[1]) != (_format(first[0][0]), first[0][1], _format(first[1][0]),
                                                            first[1][1]):
            return None
    keys, values = _concat([k[0] for k, _ in read]), _concat([v[0] for _, v in read])
    groups = {x.group for x in (keys, values) if isinstance(x, PackedRows) and x.axis == "channel"}
    if len(groups) > 1:
        return None
    dim = first[0][0].shape[-1] if isinstance(first[0][0], torch.Tensor) else first[0][0].dim
    heads = {b.num_heads for b in bases}
    if len(heads) > 1 or not all(kernels.uses_kernels(device, dim, *(
            (x.bits, x.group, x.axis) if isinstance(x, PackedRows) else (16, 1, "token")), attention=True)
            for x in (keys, values)):
        return None
    from kvstack.kernels.triton_decode import DecodePlan

    lengths = [n for b in bases for n in b.lengths]
    segments = Segments.from_lengths(lengths, groups.pop() if groups else 0, device=device)
    return KernelPlan(DecodePlan(keys, values, segments), dim, len(bases), heads.pop(), first[0][1], first[1][1])


def fast_ready(layer) -> bool:
    """Whether ``layer`` (a CompressedLayer) is in a shape the kernels can decode, statically."""
    return layer.window is None and len(layer.segments) == 1 and not layer.policies


@dataclass
class FastStep:
    """One layer's step, ready for the kernel (``attend``) or for the generic path (``materialize``)."""

    kplan: KernelPlan
    tail: DecodeTail
    key_rot: torch.Tensor | None
    value_rot: torch.Tensor | None
    generic: Any  # () -> the generic path's (keys, values) for this step, keys carrying ``_kvstack``

    def __post_init__(self) -> None:
        self.tail.kernel_step = False  # set once the kernels answered this step (what a graph may capture)

    def materialize(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The generic path's dense keys (carrying their row metadata) and values, for a call ``attend`` refused."""
        self.tail.kernel_step = False
        return self.generic()

    def attend(self, module, query: torch.Tensor, kwargs: dict) -> torch.Tensor | None:
        """``[B, q, Hq, D]`` attention output (transformers' layout), or None if this call can't use it.

        Nothing here reads a value back from the device, and every tensor the launch reads
        stays at its address within a tail bucket (what a CUDA graph replay needs).
        """
        b, hq, qn, d = query.shape
        h = self.kplan.heads
        s = self.kplan.plan.segments.count
        if hq % h or b * h != s or (hq // h) * qn > MAX_QUERY_ROWS or kwargs.get("dropout", 0.0):
            return None
        if getattr(getattr(module, "config", None), "attn_logit_softcapping", None):
            return None
        if self.key_rot is not None:
            query = (query.float() @ self.key_rot.T).to(query.dtype)
        tk, tv = self.tail.flat()
        out = self.kplan.plan(query.reshape(s, (hq // h) * qn, d), tk, tv, tail=self.tail.table,
                              scale=kwargs.get("scaling"), query_tokens=qn)
        if self.value_rot is not None:
            out = (out.float() @ self.value_rot).to(query.dtype)
        self.tail.kernel_step = True
        if qn == 1:  # [S, M, D] is already [B, 1, Hq, D]
            return out.view(b, 1, hq, d)
        return out.view(b, hq, qn, d).transpose(1, 2).contiguous()


class PlanHolder:
    """A layer's kernel plan, made on its first step and kept while its compressed rows stay the same objects."""

    def __init__(self) -> None:
        self.bases: list | None = None
        self.kplan: KernelPlan | None = None
        self.rots: tuple = (None, None)

    def get(self, bases: list, dtype: torch.dtype, device: torch.device) -> KernelPlan | None:
        if not (device.type == "cuda" or kernels.ALLOW_CPU):
            return None
        if self.bases is None or len(self.bases) != len(bases) or any(a is not b for a, b in zip(self.bases, bases)):
            self.bases = list(bases)
            self.kplan = kernel_plan(bases, dtype, device)
            self.rots = self.kplan.rotations(device) if self.kplan is not None else (None, None)
        return self.kplan

    def matches(self, tail: DecodeTail) -> bool:
        """Whether the plan can attend over ``tail``: not when it is in another basis (the rows were replaced)."""
        return self.kplan is not None and tail.seeds == (self.kplan.key_seed, self.kplan.value_seed)

    def step(self, tail: DecodeTail, materialize) -> FastStep | None:
        """A step over ``tail`` (``materialize``: its generic view), or None when the plan cannot read it."""
        return FastStep(self.kplan, tail, *self.rots, materialize) if self.matches(tail) else None
