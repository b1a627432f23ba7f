"""Rows partly quantized and partly kept dense: KIVI's full-precision residual of recent tokens.

:class:`SplitRows` holds the quantized rows in one :class:`QuantRows`, the dense rows in
one :class:`DenseRows`, and the row order as runs ``(dense?, count)`` (a few Python ints
per head, like ``KVLayer.lengths``). ``nbytes`` is exactly the two parts' bytes. On the wire
(kind ``split``) the two parts are children and the runs are meta.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from kvstack.rows.dense import DenseRows
from kvstack.rows.encoding import Parts, WireEncoding, need, need_int
from kvstack.rows.groups import run_lengths
from kvstack.rows.quant import QuantRows


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


# --- wire encoding: the two parts as children, the run order as meta -----------------------------
def _parts(s: SplitRows) -> Parts:
    return Parts(meta={"runs": [[bool(d), int(c)] for d, c in s.runs]}, children={"quant": s.quant, "dense": s.dense})


def _build(meta: dict, arrays: dict, children: dict) -> SplitRows:
    runs = meta.get("runs")
    need(isinstance(runs, list) and len(runs) <= 1 << 24, "split rows need a runs list")
    clean = []
    for run in runs:
        need(isinstance(run, list) and len(run) == 2 and isinstance(run[0], bool), f"bad run {run!r}")
        clean.append((run[0], need_int(run[1], "run length", 1)))
    quant, dense = children.get("quant"), children.get("dense")
    need(isinstance(quant, QuantRows) and isinstance(dense, DenseRows), "split rows need quant and dense parts")
    n_dense = sum(c for d, c in clean if d)
    need(n_dense == dense.shape[0], f"runs name {n_dense} dense rows, the dense part has {dense.shape[0]}")
    need(sum(c for d, c in clean if not d) == quant.shape[0], "runs do not match the quantized rows")
    need(dense.shape[1] == quant.dim, "dense and quantized rows differ in width")
    need(dense.dtype == quant.dtype, "dense and quantized rows differ in dtype")
    return SplitRows(quant, dense, tuple(clean))


WIRE = WireEncoding("split", SplitRows, _parts, _build)
