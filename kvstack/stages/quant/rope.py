"""Keys stored before RoPE (quantized or otherwise) and rotated to their positions when read.

KVQuant quantizes keys *before* the rotation: pre-RoPE, a key channel has one stable
distribution across tokens, while RoPE mixes channel pairs at position-dependent angles
and smears the outlier channels that per-channel scales rely on. :class:`RotatedRows`
wraps any encoding of pre-RoPE rows with the layer's :class:`~kvstack.stages.common.rope.Rotary`
and each row's position: none stored when the rows are ``offset + 0..n_h-1`` in every head
(nothing evicted), ``int32`` per row (counted) otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from kvstack.kv import Encoded, tensor_nbytes
from kvstack.stages.common.heads import head_counts, segment_aranges
from kvstack.stages.common.rope import Rotary


@dataclass(frozen=True, eq=False)
class RotatedRows:
    """``inner`` holds pre-RoPE rows; ``decode`` rotates them to their positions."""

    inner: Encoded
    rope: Rotary
    segments: tuple[int, ...]  # rows per head
    positions: torch.Tensor | None  # int32 [n]; None: position_offset + 0..n_h-1 in every head
    position_offset: int
    out_dtype: torch.dtype

    @classmethod
    def encode(
        cls,
        rows: torch.Tensor,
        positions: torch.Tensor,
        segments: Sequence[int],
        rope: Rotary,
        encode: Callable[[torch.Tensor], Encoded],
    ) -> RotatedRows:
        """Un-rotate post-RoPE ``rows`` at ``positions``, ``encode`` them, keep what reading needs.

        ``encode`` gets float32 (float64) rows and should decode to that precision: the rotation
        is applied before rounding to ``rows.dtype``, as the model rotates its keys.
        """
        segments = tuple(int(s) for s in segments)
        work = rows.double() if rows.dtype == torch.float64 else rows.float()
        pre = rope.unrotate(work, positions)
        offset = int(positions[0]) if positions.numel() else 0
        stored = None
        if not torch.equal(positions.long(), segment_aranges(segments) + offset):
            stored, offset = positions.to(torch.int32), 0
        return cls(encode(pre), rope, segments, stored, offset, rows.dtype)

    def row_positions(self) -> torch.Tensor:
        if self.positions is None:
            return segment_aranges(self.segments) + self.position_offset
        return self.positions.long()

    # --- Encoded protocol ----------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return self.inner.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.out_dtype

    @property
    def nbytes(self) -> int:
        return self.inner.nbytes + tensor_nbytes(self.positions)

    def decode(self) -> torch.Tensor:
        pre = self.inner.decode()
        work = pre.double() if pre.dtype == torch.float64 else pre.float()
        return self.rope.rotate(work, self.row_positions()).to(self.dtype)

    def select(self, rows: torch.Tensor) -> RotatedRows:
        rows = rows.long()
        return replace(
            self,
            inner=self.inner.select(rows),
            segments=head_counts(self.segments, rows),
            positions=self.row_positions()[rows].to(torch.int32),
            position_offset=0,
        )
