"""The ragged layout the kernels read: rows of many (sequence, KV head) segments in one tensor.

kvstack keeps a layer's rows head-major with a length per head (selection leaves heads
ragged); a batch of sequences is just more segments. A kernel gets, per segment, where
its rows start, how many there are and - for per-channel scales, whose groups of tokens
never cross a segment - where its first scale row is. Building this table once per
layer on the host is cheap; the kernels then never see padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kvstack.errors import InputError
from kvstack.kv import tensor_nbytes


@dataclass(frozen=True)
class Segments:
    """Row start, row count and first scale-group row of each segment (int32 tensors)."""

    starts: torch.Tensor  # int32 [S]
    lengths: torch.Tensor  # int32 [S]
    group_starts: torch.Tensor  # int32 [S]: first channel-axis scale row (0s when unused)
    max_length: int
    total_rows: int

    @classmethod
    def from_lengths(cls, lengths: Sequence[int], group: int = 0, device=None) -> Segments:
        """Segments laid end to end; ``group`` > 0 numbers per-channel scale groups of ``group`` tokens."""
        ints = [int(n) for n in lengths]
        if any(n < 0 for n in ints):
            raise InputError(f"segment lengths must be >= 0, got {list(lengths)}")
        lens = torch.tensor(ints, dtype=torch.int64)
        starts = torch.cumsum(lens, 0) - lens
        if group > 0:
            per = (lens + group - 1) // group
            gstarts = torch.cumsum(per, 0) - per
        else:
            gstarts = torch.zeros_like(lens)
        to = lambda t: t.to(device=device, dtype=torch.int32)
        return cls(to(starts), to(lens), to(gstarts), max(ints, default=0), sum(ints))  # sizes from Python ints

    @property
    def count(self) -> int:
        return int(self.starts.numel())

    def to(self, device) -> Segments:
        return Segments(
            self.starts.to(device), self.lengths.to(device), self.group_starts.to(device),
            self.max_length, self.total_rows,
        )


@dataclass(frozen=True)
class PackedRows:
    """Packed integer codes with fp16 scales (+ zeros), as :class:`~kvstack.rows.quant.QuantRows` stores them.

    ``axis="token"``: scales ``[rows, dim // group]``; ``axis="channel"``: scales
    ``[groups, dim]`` with groups of ``group`` tokens inside each segment.
    """

    codes: torch.Tensor  # uint8 [rows, dim * bits // 8]
    scales: torch.Tensor  # float16
    zeros: torch.Tensor | None  # float16 like scales; None: symmetric
    bits: int
    group: int
    axis: str
    dim: int

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.codes) + tensor_nbytes(self.scales) + tensor_nbytes(self.zeros)

    @classmethod
    def from_quant_rows(cls, q) -> PackedRows:
        """View a kvstack ``QuantRows`` (2, 4 or 8 bits) as kernel input, sharing its tensors."""
        if q.bits not in (2, 4, 8):
            raise InputError(f"the kernels read 2-, 4- and 8-bit codes, not {q.bits}-bit")
        return cls(q.codes, q.scales, q.zeros, q.bits, q.group, q.axis, q.dim)
