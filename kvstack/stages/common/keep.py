"""Attention-sink rows kept exact beside a low-rank (or merged) encoding of the rest.

The first tokens of a context receive a large share of the attention (SmolLM2-135M: ~40%
to the first 4 tokens, ``kvstack inspect``), and their keys/values are unlike the other
rows. Projecting them loses little energy but moves the output a lot: on SmolLM2, keeping
the first 4 tokens exact turns ``svd:energy=0.99`` from +15.5% to +0.9% perplexity
(benchmarks/RESULTS.md). So the low-rank
stages keep rows at positions ``< sink`` as they are, and fit their bases on the rest only.

:class:`KeptRows` holds the exact rows in a :class:`~kvstack.kv.DenseRows`, the others in
any inner encoding, and the row order as runs ``(exact?, count)`` (a few Python ints per
head, like ``KVLayer.lengths``). ``nbytes`` is the two parts' bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvstack.kv import DenseRows, Encoded


def runs_of(mask: torch.Tensor) -> tuple[tuple[bool, int], ...]:
    if mask.numel() == 0:
        return ()
    values, counts = torch.unique_consecutive(mask, return_counts=True)
    return tuple((bool(v), int(c)) for v, c in zip(values, counts, strict=True))


def mask_of(runs: tuple[tuple[bool, int], ...]) -> torch.Tensor:
    if not runs:
        return torch.zeros(0, dtype=torch.bool)
    flags = torch.tensor([e for e, _ in runs], dtype=torch.bool)
    counts = torch.tensor([c for _, c in runs], dtype=torch.long)
    return torch.repeat_interleave(flags, counts)


def per_head_counts(lengths: tuple[int, ...], mask: torch.Tensor) -> tuple[int, ...]:
    """Rows per head left after removing the ``mask`` rows (head-major rows)."""
    return tuple(int(part.logical_not().sum()) for part in torch.split(mask, list(lengths)))


@dataclass(frozen=True, eq=False)
class KeptRows:
    """Rows in their original order: ``exact`` ones dense, the rest in ``inner`` (see ``runs``)."""

    inner: Encoded
    exact: DenseRows
    runs: tuple[tuple[bool, int], ...]  # (rows are exact, how many in a row)

    @classmethod
    def wrap(cls, rows: torch.Tensor, exact_mask: torch.Tensor, inner: Encoded) -> Encoded:
        """``inner`` encodes ``rows[~exact_mask]``; keep ``rows[exact_mask]`` exact (just ``inner`` if none)."""
        if not bool(exact_mask.any()):
            return inner
        return cls(inner, DenseRows(rows[exact_mask].contiguous()), runs_of(exact_mask))

    # --- Encoded protocol ----------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return (self.inner.shape[0] + self.exact.shape[0], self.inner.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        return self.inner.dtype

    @property
    def nbytes(self) -> int:
        return self.inner.nbytes + self.exact.nbytes

    def decode(self) -> torch.Tensor:
        mask = mask_of(self.runs)
        inner = self.inner.decode()
        out = torch.empty(self.shape, dtype=self.dtype, device=inner.device)
        out[~mask] = inner
        out[mask] = self.exact.decode().to(self.dtype)
        return out

    def select(self, rows: torch.Tensor) -> Encoded:
        """Keep ``rows``: exact ones stay exact, the others go through the inner encoding's ``select``."""
        mask = mask_of(self.runs)
        rows = rows.long()
        rank = torch.where(mask, torch.cumsum(mask, 0) - 1, torch.cumsum(~mask, 0) - 1)
        kept_exact, kept_rank = mask[rows], rank[rows]
        inner = self.inner.select(kept_rank[~kept_exact])
        return KeptRows(inner, self.exact.select(kept_rank[kept_exact]), runs_of(kept_exact))

    # --- forwarded to the inner encoding -------------------------------------------------
    @property
    def select_requantizes(self) -> bool:
        return bool(getattr(self.inner, "select_requantizes", False))

    @property
    def has_inner_rows(self) -> bool:
        return bool(getattr(self.inner, "has_inner_rows", False))

    def inner_rows(self) -> tuple[torch.Tensor, tuple[int, ...]]:
        return self.inner.inner_rows()

    def with_inner(self, coefficients: Encoded) -> KeptRows:
        return KeptRows(self.inner.with_inner(coefficients), self.exact, self.runs)
