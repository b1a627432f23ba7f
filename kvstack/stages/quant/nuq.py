"""Non-uniform quantization (KVQuant's "nuq" datatype) with a dense-and-sparse outlier table.

Format of :class:`NuqRows` (``n`` rows of ``d`` channels, ``b`` bits, ``H`` heads):

* each element is first normalized to ``u = (x - zero) / scale`` in ``[0, 1]``; ``zero`` is the
  minimum of its group rounded down to fp16, ``scale`` the range rounded up, both ``float16``,
  computed without the outliers. ``axis="channel"`` (keys): a group is one channel of one head,
  ``zero/scale [H, d]``; ``axis="token"`` (values): a group is one row, ``zero/scale [n]``.
* ``u`` is replaced by the index of its nearest level in the head's codebook, ``float16
  [H, 2**b]`` ascending levels in ``[0, 1]`` fitted by k-means (on calibration text, or on these
  rows), packed ``b``-bit codes ``uint8 [n, packed_width(d, b)]``;
* outliers (see :mod:`kvstack.stages.quant.sparse`) are written over the result exactly (fp16).

``nbytes`` = codes + zero + scale + outlier table + the codebook when it was fitted on these
rows (``owns_codebook``); a calibrated codebook lives outside the cache, shared by every
cache of the model, like a calibrated low-rank basis. Every inlier is within ``scale`` times the
largest distance from a point of ``[0, 1]`` to its nearest level (what the tests check).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from kvstack.errors import InputError
from kvstack.kv import tensor_nbytes
from kvstack.rows.groups import fp16_down, fp16_up, segment_ids
from kvstack.rows.pack import pack_codes, unpack_codes
from kvstack.stages.common.heads import head_counts
from kvstack.stages.quant.codebook import fit_levels, nearest_level
from kvstack.stages.quant.sparse import SparseOutliers, outlier_scores


def _group_range(x: torch.Tensor, inlier: torch.Tensor, segments: Sequence[int], axis: str):
    """Min and max of the inliers of every group (0 where a group has none)."""
    lo_src = x.masked_fill(~inlier, float("inf"))
    hi_src = x.masked_fill(~inlier, float("-inf"))
    if axis == "token":
        lo, hi = lo_src.amin(1), hi_src.amax(1)
    else:
        parts_lo = [p.amin(0) if p.shape[0] else x.new_zeros(x.shape[1]) for p in torch.split(lo_src, list(segments))]
        parts_hi = [p.amax(0) if p.shape[0] else x.new_zeros(x.shape[1]) for p in torch.split(hi_src, list(segments))]
        lo, hi = torch.stack(parts_lo), torch.stack(parts_hi)
    empty = ~torch.isfinite(lo)
    return lo.masked_fill(empty, 0.0), hi.masked_fill(empty, 0.0)


@dataclass(frozen=True)
class Normalized:
    """Rows mapped to ``[0, 1]`` per group, with the fp16 parameters and the outlier table."""

    u: torch.Tensor  # [n, d] float
    zero: torch.Tensor  # float16, [H, d] (channel) or [n] (token)
    scale: torch.Tensor
    outliers: SparseOutliers
    inlier: torch.Tensor  # [n, d] bool


def expand(t: torch.Tensor, axis: str, heads: torch.Tensor) -> torch.Tensor:
    """Per-group parameters as one value per element (``[n, d]`` or broadcastable ``[n, 1]``)."""
    return t.float().index_select(0, heads) if axis == "channel" else t.float().unsqueeze(1)


def normalize(x: torch.Tensor, segments: Sequence[int], axis: str, outliers: float) -> Normalized:
    """Split off the outliers and map the rest of ``x [n, d]`` to ``[0, 1]`` per group."""
    x = x.double() if x.dtype == torch.float64 else x.float()
    if not bool(torch.isfinite(x).all()):
        raise InputError("keys/values hold NaN/inf; keep such layers unquantized, e.g. 'bf16@layerN' after it")
    table = SparseOutliers.top(x, outlier_scores(x, segments, axis), outliers)
    inlier = ~table.mask(x.shape[0])
    lo, hi = _group_range(x, inlier, segments, axis)
    zero = fp16_down(lo)
    scale = fp16_up(hi - zero.to(hi.dtype))
    if not (bool(torch.isfinite(scale).all()) and bool(torch.isfinite(zero).all())):
        raise InputError(
            "values are NaN/inf or beyond the float16 range of the scales (|x| > 65504); "
            "keep such layers unquantized, e.g. 'bf16@layerN' after the quantizer"
        )
    heads = segment_ids(segments, x.device)
    s = expand(scale, axis, heads).to(x.dtype)
    u = ((x - expand(zero, axis, heads).to(x.dtype)) / torch.where(s > 0, s, torch.ones_like(s))).clamp(0, 1)
    return Normalized(u * inlier, zero, scale, table, inlier)


def fit_codebook(norm: Normalized, segments: Sequence[int], bits: int) -> torch.Tensor:
    """``float16 [H, 2**bits]``: k-means levels of each head's inlier ``u``."""
    books = []
    for u, keep in zip(torch.split(norm.u, list(segments)), torch.split(norm.inlier, list(segments)), strict=True):
        vals = u[keep]
        if vals.numel() == 0:
            vals = torch.linspace(0, 1, 1 << bits, dtype=u.dtype, device=u.device)
        books.append(fit_levels(vals[None], 1 << bits)[0])
    return torch.stack(books).to(torch.float16)


class CodeRows:
    """``shape`` and ``dtype`` of an encoding holding one row of packed ``codes`` per row, ``dim`` wide."""

    codes: torch.Tensor
    dim: int
    out_dtype: torch.dtype

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.codes.shape[0]), self.dim)

    @property
    def dtype(self) -> torch.dtype:
        return self.out_dtype


@dataclass(frozen=True, eq=False)
class NuqRows(CodeRows):
    """Rows as packed codebook indices + per-group fp16 zero/scale + an outlier table; see the module doc."""

    codes: torch.Tensor
    zero: torch.Tensor
    scale: torch.Tensor
    codebook: torch.Tensor  # float16 [H, 2**bits]
    owns_codebook: bool
    outliers: SparseOutliers
    bits: int
    axis: str
    dim: int
    segments: tuple[int, ...]
    out_dtype: torch.dtype

    @classmethod
    def quantize(
        cls,
        rows: torch.Tensor,
        bits: int,
        axis: str,
        segments: Sequence[int],
        outliers: float = 0.01,
        codebook: torch.Tensor | None = None,
        out_dtype: torch.dtype | None = None,
    ) -> NuqRows:
        """Quantize ``[n, d]`` rows; ``codebook=None`` fits one per head on the rows (then counted)."""
        segments = tuple(int(s) for s in segments)
        if sum(segments) != rows.shape[0]:
            raise InputError(f"segments {segments} cover {sum(segments)} rows, but there are {rows.shape[0]}")
        norm = normalize(rows, segments, axis, outliers)
        owns = codebook is None
        book = fit_codebook(norm, segments, bits) if owns else codebook.to(device=rows.device, dtype=torch.float16)
        if book.shape != (len(segments), 1 << bits):
            raise InputError(f"codebook of shape {tuple(book.shape)}; expected {(len(segments), 1 << bits)}")
        codes = torch.empty(norm.u.shape, dtype=torch.uint8, device=rows.device)
        start = 0
        for h, n in enumerate(segments):
            u = norm.u[start : start + n].reshape(1, -1)
            near = nearest_level(u, book[h : h + 1].to(u.dtype))
            codes[start : start + n] = near.view(n, rows.shape[1]).to(torch.uint8)
            start += n
        return cls(
            pack_codes(codes, bits), norm.zero, norm.scale, book, owns, norm.outliers, bits, axis,
            int(rows.shape[1]), segments, out_dtype or rows.dtype,
        )

    # --- Encoded protocol (shape, dtype: CodeRows) ------------------------------------
    @property
    def nbytes(self) -> int:
        book = tensor_nbytes(self.codebook) if self.owns_codebook else 0
        return tensor_nbytes(self.codes) + tensor_nbytes(self.zero) + tensor_nbytes(self.scale) + book + (
            self.outliers.nbytes
        )

    def dequantize(self) -> torch.Tensor:
        """float32 rows (float64 when the output dtype is float64)."""
        work = torch.float64 if self.out_dtype == torch.float64 else torch.float32
        heads = segment_ids(self.segments, self.codes.device)
        q = unpack_codes(self.codes, self.bits, self.dim).long()
        levels = self.codebook.to(device=heads.device, dtype=work).index_select(0, heads)  # [n, 2**bits]
        u = torch.gather(levels, 1, q)
        x = expand(self.zero, self.axis, heads).to(work) + u * expand(self.scale, self.axis, heads).to(work)
        return self.outliers.apply(x)

    def decode(self) -> torch.Tensor:
        return self.dequantize().to(self.out_dtype)

    def select(self, rows: torch.Tensor) -> NuqRows:
        """Keep ``rows``: their codes (per-channel parameters of a head still cover any subset of it)."""
        rows = rows.long().to(self.codes.device)  # row tables are built on the host; the codes may be on a GPU
        pick = (lambda t: t.index_select(0, rows)) if self.axis == "token" else (lambda t: t)
        return replace(
            self,
            codes=self.codes.index_select(0, rows),
            zero=pick(self.zero),
            scale=pick(self.scale),
            outliers=self.outliers.select(rows, self.shape[0]),
            segments=head_counts(self.segments, rows),
        )
