"""The SVD arithmetic behind every low-rank stage: fit a basis, choose a rank, project.

A basis is the right singular vectors of the rows ``X [n, d]``, sorted by singular value,
as the columns of ``[d, d]``: projecting onto the first ``r`` columns keeps the most energy
(squared Frobenius norm) any rank-``r`` subspace can keep, and the energy lost is exactly
the tail of the squared singular values (Eckart-Young). The tests check both facts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Fit in float64 when the rows are float64 (exact references), else float32 (fp16/bf16 are too coarse)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass(frozen=True)
class Basis:
    """Orthonormal directions ``vectors [d, d]`` (columns sorted by ``singular`` values, descending)."""

    vectors: torch.Tensor
    singular: torch.Tensor

    def rank_for(self, energy: float) -> int:
        """The smallest rank whose subspace keeps at least ``energy`` of the fitted rows' energy."""
        return rank_for_energy(self.singular, energy)

    def tail_energy(self, rank: int) -> float:
        """Share of the fitted rows' energy a rank-``rank`` projection loses."""
        power = self.singular.double() ** 2
        total = float(power.sum())
        return 0.0 if total == 0 else float(power[rank:].sum()) / total


def fit_basis(rows: torch.Tensor) -> Basis:
    """SVD basis of ``rows [n, d]``; always ``d`` directions (completed when ``n < d``)."""
    x = rows.to(compute_dtype(rows.dtype))
    n, d = x.shape
    _, s, vh = torch.linalg.svd(x, full_matrices=n < d)
    singular = torch.zeros(d, dtype=x.dtype)
    singular[: s.numel()] = s
    return Basis(vectors=vh.mT.contiguous(), singular=singular)


def rank_for_energy(singular: torch.Tensor, energy: float) -> int:
    """Smallest ``r`` with ``sum(s[:r]**2) >= energy * sum(s**2)`` (at least 1)."""
    power = singular.double() ** 2
    total = float(power.sum())
    if total == 0:
        return 1
    kept = torch.cumsum(power, 0) / total
    # a tiny slack so energy=1.0 is met by the full rank despite rounding in the cumulative sum
    return max(1, int((kept < energy - 1e-12).sum()) + 1)


def project(rows: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Coefficients ``rows @ basis`` (``[n, d] @ [d, r]``), in the fit's precision."""
    return rows.to(basis.dtype) @ basis
