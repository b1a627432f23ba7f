"""MiniCache merging (Liu et al., 2024): two adjacent layers share each token's direction.

For a token present in layers ``l`` and ``l+1`` with rows ``a`` and ``b``, the merged
direction is the SLERP of the unit vectors ``a/|a|`` and ``b/|b|`` at weight ``w``; each layer
keeps its own magnitude, so the rows read back as ``|a| e`` and ``|b| e``. Tokens whose
angular distance ``arccos(cos(a, b)) / pi`` exceeds the threshold ``t`` stay unmerged
(retained) in both layers.

Storage, :class:`MergedRows` (one per layer part, keys or values):

* ``directions [m, d]``: the merged unit directions, held once: the owning layer counts
  them, the partner holds the same tensor with ``owns_directions=False`` and counts nothing
  for it;
* ``magnitudes [m]``: this layer's own norms of its merged rows;
* ``retained [k, d]``: this layer's unmerged rows, as they were;
* ``merged_bits``: one bit per row (packed ``uint8``) saying whether it is merged; merged
  rows take directions in row order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kvstack.kv import tensor_nbytes


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """``[n]`` bool -> ``uint8 [ceil(n/8)]``, bit ``i % 8`` of byte ``i // 8`` (little-endian bit order)."""
    n = mask.numel()
    padded = torch.zeros(-(-n // 8) * 8, dtype=torch.uint8, device=mask.device)
    padded[:n] = mask.to(torch.uint8)
    weights = torch.tensor([1 << i for i in range(8)], dtype=torch.uint8, device=mask.device)
    return (padded.view(-1, 8) * weights).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: ``[n]`` bool."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    return ((packed[:, None] >> shifts) & 1).bool().flatten()[:n]


def angular_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``arccos(cos(a_i, b_i)) / pi`` per row, in [0, 1] (0: same direction, 1: opposite)."""
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(torch.finfo(a.dtype).tiny)
    return torch.arccos(cos.clamp(-1.0, 1.0)) / math.pi


def slerp(ua: torch.Tensor, ub: torch.Tensor, w: float) -> torch.Tensor:
    """Spherical interpolation of unit rows, ``w=0`` gives ``ua``, ``w=1`` gives ``ub``; unit rows out.

    ``sin((1-w) W) / sin W * ua + sin(w W) / sin W * ub`` with ``W`` the angle between them;
    nearly parallel rows (``sin W`` ~ 0) use the straight line, the limit of the same formula.
    """
    cos = (ua * ub).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.arccos(cos)
    so = torch.sin(omega)
    small = so < 1e-6
    safe = torch.where(small, torch.ones_like(so), so)
    ca = torch.where(small, torch.full_like(so, 1.0 - w), torch.sin((1.0 - w) * omega) / safe)
    cb = torch.where(small, torch.full_like(so, w), torch.sin(w * omega) / safe)
    out = ca * ua + cb * ub
    return out / out.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(out.dtype).tiny)


@dataclass(frozen=True, eq=False)
class MergedRows:
    """One layer's keys or values after merging with its neighbour; see the module docstring."""

    directions: torch.Tensor  # [m, d] unit rows, shared with the partner layer
    owns_directions: bool
    magnitudes: torch.Tensor  # [m]
    retained: torch.Tensor  # [k, d]
    merged_bits: torch.Tensor  # uint8 [ceil(n/8)]
    rows: int  # n = m + k
    out_dtype: torch.dtype

    def merged_mask(self) -> torch.Tensor:
        return unpack_bits(self.merged_bits, self.rows)

    # --- Encoded protocol ----------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, int(self.retained.shape[1]))

    @property
    def dtype(self) -> torch.dtype:
        return self.out_dtype

    @property
    def nbytes(self) -> int:
        shared = tensor_nbytes(self.directions) if self.owns_directions else 0
        return shared + tensor_nbytes(self.magnitudes) + tensor_nbytes(self.retained) + tensor_nbytes(self.merged_bits)

    def decode(self) -> torch.Tensor:
        mask = self.merged_mask()
        work = torch.promote_types(self.directions.dtype, torch.float32)
        out = torch.empty(self.shape, dtype=work, device=self.retained.device)
        out[mask] = self.directions.to(work) * self.magnitudes.to(work)[:, None]
        out[~mask] = self.retained.to(work)
        return out.to(self.out_dtype)

    def select(self, rows: torch.Tensor) -> MergedRows:
        """Keep ``rows``: an owned copy of their directions (evicting after merging ends the sharing)."""
        mask = self.merged_mask()
        rows = rows.long().to(mask.device)
        rank = torch.where(mask, torch.cumsum(mask, 0) - 1, torch.cumsum(~mask, 0) - 1)
        kept_merged, kept_rank = mask[rows], rank[rows]
        m_idx, r_idx = kept_rank[kept_merged], kept_rank[~kept_merged]
        return MergedRows(
            directions=self.directions.index_select(0, m_idx),
            owns_directions=True,
            magnitudes=self.magnitudes.index_select(0, m_idx),
            retained=self.retained.index_select(0, r_idx),
            merged_bits=pack_bits(kept_merged),
            rows=int(rows.numel()),
            out_dtype=self.out_dtype,
        )


def merge_pair(
    a: torch.Tensor, b: torch.Tensor, a_common: torch.Tensor, b_common: torch.Tensor, t: float, w: float
) -> tuple[MergedRows, MergedRows, int]:
    """Merge rows ``a [na, d]`` and ``b [nb, d]`` of two layers.

    ``a_common`` / ``b_common`` are the row indices (increasing, the same tokens in the same
    order) present in both layers; the rows among them within angular distance ``t`` merge.
    Returns the owner's and the partner's encodings, and how many rows merged.
    """
    store = a.dtype
    work = torch.promote_types(store, torch.float32)
    xa, xb = a.to(work), b.to(work)
    a_common, b_common = a_common.to(a.device), b_common.to(b.device)
    ca, cb = xa[a_common], xb[b_common]
    na, nb = ca.norm(dim=-1), cb.norm(dim=-1)
    ok = (angular_distance(ca, cb) <= t) & (na > 0) & (nb > 0)
    a_sel, b_sel = a_common[ok], b_common[ok]
    direction = slerp(ca[ok] / na[ok, None], cb[ok] / nb[ok, None], w).to(store)

    def encode(x: torch.Tensor, sel: torch.Tensor, norms: torch.Tensor, owns: bool) -> MergedRows:
        mask = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        mask[sel] = True
        return MergedRows(
            directions=direction,
            owns_directions=owns,
            magnitudes=norms.to(store),
            retained=x[~mask].to(store),
            merged_bits=pack_bits(mask),
            rows=int(x.shape[0]),
            out_dtype=store,
        )

    return encode(xa, a_sel, na[ok], True), encode(xb, b_sel, nb[ok], False), int(ok.sum())
