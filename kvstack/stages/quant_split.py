"""Rows partly quantized and partly kept dense: KIVI's full-precision residual of recent tokens.

:class:`SplitRows` holds the quantized rows in one :class:`QuantRows`, the dense rows in
one :class:`DenseRows`, and the row order as runs ``(dense?, count)`` (a few Python ints
per head, like ``KVLayer.lengths``). ``nbytes`` is exactly the two parts' bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from kvstack.kv import DenseRows
from kvstack.stages.quant_groups import run_lengths
from kvstack.stages.quant_rows import QuantRows


def _runs(dense: torch.Tensor) -> tuple[tuple[bool, int], ...]:
    if dense.numel() == 0:
        return ()
    values, counts = torch.unique_consecutive(dense, return_counts=True)
    return tuple((bool(v), int(c)) for v, c in zip(values, counts, strict=True))


@dataclass(frozen=True, eq=False)
class SplitRows:
    """Rows in their original order, each either in ``quant`` or in ``dense`` (see ``runs``)."""

    quant: QuantRows
    dense: DenseRows
    runs: tuple[tuple[bool, int], ...]  # (row is dense, how many rows in a row)

    @classmethod
    def build(
        cls,
        rows: torch.Tensor,
        dense_mask: torch.Tensor,
        head_of_row: torch.Tensor,
        quantize: Callable[[torch.Tensor, Sequence[int]], QuantRows],
    ) -> SplitRows:
        """Keep rows where ``dense_mask`` is set as they are; ``quantize(rows, rows_per_head)`` the rest."""
        dense_mask = dense_mask.to(rows.device).bool()
        q_idx = torch.nonzero(~dense_mask).flatten()
        d_idx = torch.nonzero(dense_mask).flatten()
        quant = quantize(rows.index_select(0, q_idx), run_lengths(head_of_row.to(rows.device)[q_idx]))
        return cls(quant, DenseRows(rows.index_select(0, d_idx)), _runs(dense_mask))

    @property
    def select_requantizes(self) -> bool:
        return self.quant.select_requantizes

    def _dense_mask(self) -> torch.Tensor:
        flags = torch.tensor([d for d, _ in self.runs], dtype=torch.bool)
        counts = torch.tensor([c for _, c in self.runs], dtype=torch.long)
        return torch.repeat_interleave(flags, counts).to(self.quant.codes.device)

    # --- Encoded protocol ----------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return (self.quant.shape[0] + self.dense.shape[0], self.quant.dim)

    @property
    def dtype(self) -> torch.dtype:
        return self.quant.dtype

    @property
    def nbytes(self) -> int:
        return self.quant.nbytes + self.dense.nbytes

    def decode(self) -> torch.Tensor:
        mask = self._dense_mask()
        out = torch.empty(self.shape, dtype=self.dtype, device=mask.device)
        out[~mask] = self.quant.decode()
        out[mask] = self.dense.decode().to(self.dtype)
        return out

    def select(self, rows: torch.Tensor) -> SplitRows:
        """Keep ``rows``: dense rows stay dense, quantized ones go through ``QuantRows.select``."""
        mask = self._dense_mask()
        rows = rows.to(mask.device).long()
        rank = torch.where(mask, torch.cumsum(mask, 0) - 1, torch.cumsum(~mask, 0) - 1)
        kept_dense, kept_rank = mask[rows], rank[rows]
        return SplitRows(
            self.quant.select(kept_rank[~kept_dense]),
            self.dense.select(kept_rank[kept_dense]),
            _runs(kept_dense),
        )
