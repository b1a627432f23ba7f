"""Dense-and-sparse: the few elements that would stretch a quantizer's range, kept beside it in a side table.

A handful of key/value elements sit far outside their channel's (keys) or token's (values)
distribution; quantizing them with the rest wastes most levels on empty range. KVQuant and
GEAR keep the top ~1% exactly in a sparse table and quantize the rest. Which elements: the
largest ``|x - median| / mean|x - median|`` of their normalization group (a head's channel
for keys, a row for values), so an outlier is judged against its own group, and a channel
that is large everywhere (handled by per-channel scales) does not use up the table.

:class:`SparseOutliers` holds ``int32`` flat indices (``row * dim + channel``, sorted) and
``float16`` values; ``nbytes`` is those two tensors. Rows can be selected (eviction) by
remapping the indices, without touching anything else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kvstack.errors import InputError
from kvstack.kv import tensor_nbytes

FP16_MAX = 65504.0


def outlier_scores(x: torch.Tensor, segments: Sequence[int], axis: str) -> torch.Tensor:
    """``[n, d]`` distance of each element from its group's median, in units of the group's mean deviation.

    ``axis="channel"``: a group is one channel of one head (``segments``: rows per head);
    ``axis="token"``: a group is one row.
    """
    x = x.float() if x.dtype != torch.float64 else x
    if axis == "token":
        dev = (x - x.median(dim=1, keepdim=True).values).abs()
        return dev / (dev.mean(dim=1, keepdim=True) + 1e-12)
    out = torch.empty_like(x)
    start = 0
    for n in segments:
        part = x[start : start + n]
        if n:
            dev = (part - part.median(dim=0, keepdim=True).values).abs()
            out[start : start + n] = dev / (dev.mean(dim=0, keepdim=True) + 1e-12)
        start += n
    return out


@dataclass(frozen=True, eq=False)
class SparseOutliers:
    """Elements of an ``[n, dim]`` row block kept as exact fp16 values at flat int32 indices."""

    index: torch.Tensor  # int32 [m], row * dim + channel, ascending
    values: torch.Tensor  # float16 [m]
    dim: int

    @classmethod
    def top(cls, x: torch.Tensor, scores: torch.Tensor, fraction: float) -> SparseOutliers:
        """The ``round(fraction * x.numel())`` elements of ``x`` with the largest ``scores``."""
        n, d = x.shape
        if n * d >= 2**31:
            raise InputError(f"{n} x {d} elements overflow int32 outlier indices; compress fewer tokens per layer")
        k = min(int(round(fraction * n * d)), n * d)
        if k == 0:
            return cls(torch.zeros(0, dtype=torch.int32, device=x.device),
                       torch.zeros(0, dtype=torch.float16, device=x.device), d)
        idx = torch.sort(torch.topk(scores.reshape(-1), k).indices).values
        vals = x.reshape(-1)[idx]
        if bool((vals.abs() > FP16_MAX).any()) or not bool(torch.isfinite(vals).all()):
            raise InputError(
                "outlier values are NaN/inf or beyond float16 (|x| > 65504); keep such layers unquantized, "
                "e.g. 'bf16@layerN' after the quantizer"
            )
        return cls(idx.to(torch.int32), vals.to(torch.float16), d)

    @property
    def count(self) -> int:
        return int(self.index.numel())

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.index) + tensor_nbytes(self.values)

    def mask(self, n: int) -> torch.Tensor:
        """``[n, dim]`` bool, True where an element is in the table."""
        m = torch.zeros(n * self.dim, dtype=torch.bool, device=self.index.device)
        m[self.index.long()] = True
        return m.view(n, self.dim)

    def apply(self, rows: torch.Tensor) -> torch.Tensor:
        """``rows`` with the table's elements written over them (in place on a flat view; returns ``rows``)."""
        if self.count:
            rows.view(-1)[self.index.long().to(rows.device)] = self.values.to(rows.dtype).to(rows.device)
        return rows

    def select(self, rows: torch.Tensor, n: int) -> SparseOutliers:
        """The entries of the kept ``rows`` (of ``n``), renumbered to the rows' new order."""
        device = self.index.device  # renumbered where the table lives: no host round trip on a GPU
        rows = rows.long().to(device)
        new_row = torch.full((n,), -1, dtype=torch.long, device=device)
        new_row[rows] = torch.arange(rows.numel(), device=device)
        old = self.index.long()
        mapped = new_row[old // self.dim]
        keep = mapped >= 0
        flat = mapped[keep] * self.dim + old[keep] % self.dim
        order = torch.argsort(flat)  # flat positions are distinct: any sort gives the same order
        return SparseOutliers(flat[order].to(torch.int32), self.values[keep][order], self.dim)
