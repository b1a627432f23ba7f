"""Rotated quantization (QuaRot / SpinQuant-style incoherence processing, no calibration).

A few channels of a key or value vector carry most of its magnitude; a per-token group's
scale must cover them, so at 2-3 bits the other channels round to almost nothing. Multiplying
every row by a fixed orthogonal ``R`` first spreads each outlier over all channels (a
Walsh-Hadamard row has every entry ``+-1/sqrt(d)``), so the group's range shrinks and the
rounding error with it. Reading multiplies by ``R^T``. Because ``R`` is orthogonal the
reconstruction error keeps its length: ``|R^T (Q(Rx)) - x| = |Q(Rx) - Rx|``, the error in the
rotated basis that the step size bounds. Keys may be rotated after RoPE: the cache is
un-rotated on read, so attention sees ordinary (dequantized) keys.

``R = H diag(s) `` with ``H`` the normalized Sylvester Walsh-Hadamard matrix (width a power of
two) and ``s`` random signs drawn from ``torch.Generator().manual_seed(seed)``. ``R`` is a
function of ``(width, seed)`` and is regenerated when read, so :class:`HadamardRows` adds 0
bytes to the inner encoding: the seed is a recipe parameter (a Python int, like the group
size), not a tensor the cache holds. On the wire (kind ``hadamard``) it is the inner encoding
plus the seed, nothing else.

Range clipping (``clip=0.75``), QuaRot's second tool: a rotated row is close to Gaussian, and
min-max scaling spends 2-bit levels on its two extremes. :func:`clip_groups` shrinks every
group's ``[min, max]`` around its middle to ``clip`` of its width before quantizing, trading a
clipped error on the few extreme elements for a finer step on all the others (on the retrieval
model, ``int2:rot,clip=0.75`` cut the KL to the full cache 3-4x vs ``int2`` and ``int2:rot``).
Elements inside the clipped range are still within half a step; clipped ones are off by their
distance to the range plus that.

GPU fast decode reads the rotated codes as they are (:func:`kvstack.hf.fast_decode.kernel_rows`):
it rotates the query by the keys' ``R`` (``q . k = (R q) . (R k)``) and un-rotates the attention
output by the values' ``R``; the generic path decodes through :meth:`HadamardRows.decode`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import torch

from kvstack.errors import RecipeError
from kvstack.rows.base import Encoded
from kvstack.rows.encoding import Parts, WireEncoding, dtype_name, need, need_float_dtype, need_int
from kvstack.rows.groups import token_groups


def check_width(width: int, what: str = "head_dim") -> None:
    """RecipeError unless ``width`` is a power of two (the widths a Walsh-Hadamard matrix has)."""
    if width < 1 or width & (width - 1):
        below = 1 << (max(width, 1).bit_length() - 1)
        raise RecipeError(
            f"rot needs a power-of-two row width (Walsh-Hadamard rotation), but {what}={width} "
            f"(nearest below: {below}); drop 'rot' for this model or layer"
        )


def hadamard(width: int) -> torch.Tensor:
    """The normalized Sylvester Walsh-Hadamard matrix ``[width, width]`` in float64 (orthogonal, symmetric)."""
    check_width(width)
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < width:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / width**0.5


@lru_cache(maxsize=32)
def _rotation_cpu(width: int, seed: int) -> torch.Tensor:
    signs = torch.randint(0, 2, (width,), generator=torch.Generator().manual_seed(seed), dtype=torch.int64)
    return hadamard(width) * (2 * signs - 1).to(torch.float64)  # H @ diag(s): scales column j by s_j


def rotation(width: int, seed: int, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """``R = H diag(s)`` for ``(width, seed)``: the same matrix on every machine (CPU generator)."""
    return _rotation_cpu(width, seed).to(device=device, dtype=dtype)


def rotate(rows: torch.Tensor, seed: int) -> torch.Tensor:
    """``R x`` for every row ``x`` of ``[n, d]`` rows, in float32: ``rows @ R^T``."""
    r = rotation(rows.shape[1], seed, torch.float32, rows.device)
    return rows.float() @ r.T


def unrotate(rows: torch.Tensor, seed: int) -> torch.Tensor:
    """``R^T y`` for every row ``y`` (the inverse of :func:`rotate`): ``rows @ R``."""
    r = rotation(rows.shape[1], seed, torch.float32, rows.device)
    return rows.float() @ r


def clip_groups(rows: torch.Tensor, group: int, axis: str, segments, ratio: float) -> torch.Tensor:
    """``rows`` with every quantization group clamped to ``ratio`` of its ``[min, max]``, around the middle.

    Groups are those :class:`~kvstack.rows.quant.QuantRows` will use: ``group`` channels
    of a token (``axis="token"``), or ``group`` tokens of a channel within a head (``segments``).
    """
    if ratio >= 1.0 or rows.numel() == 0:
        return rows
    x = rows.float()
    n, d = x.shape
    if axis == "token":
        lo, hi = x.reshape(n, d // group, group).aminmax(dim=-1)
        lo, hi = lo.repeat_interleave(group, 1), hi.repeat_interleave(group, 1)
    else:
        gid, count = token_groups(segments, group, device=x.device)
        index = gid.unsqueeze(1).expand(n, d)
        lo = x.new_full((count, d), float("inf")).scatter_reduce(0, index, x, "amin")[gid]
        hi = x.new_full((count, d), float("-inf")).scatter_reduce(0, index, x, "amax")[gid]
    mid, half = (lo + hi) / 2, (hi - lo) / 2 * ratio
    return torch.minimum(torch.maximum(x, mid - half), mid + half).to(rows.dtype)


@dataclass(frozen=True, eq=False)
class HadamardRows:
    """Rows stored rotated by ``R(width, seed)`` inside ``inner``; ``decode`` rotates them back.

    ``nbytes`` is the inner encoding's: ``R`` is regenerated from the seed (module docstring).
    """

    inner: Encoded  # rotated rows, decoded as float32
    seed: int
    out_dtype: torch.dtype

    @property
    def select_requantizes(self) -> bool:
        return bool(getattr(self.inner, "select_requantizes", False))

    # --- Encoded protocol ----------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return self.inner.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.out_dtype

    @property
    def nbytes(self) -> int:
        return self.inner.nbytes

    def decode(self) -> torch.Tensor:
        return unrotate(self.inner.decode(), self.seed).to(self.out_dtype)

    def select(self, rows: torch.Tensor) -> HadamardRows:
        """Keep ``rows``: the rotation is per row, so the inner encoding's own select is all it takes."""
        return replace(self, inner=self.inner.select(rows))


# --- wire encoding: the inner rows as a child, the seed as meta ----------------------------------
def _parts(h: HadamardRows) -> Parts:
    return Parts(meta={"seed": h.seed, "out_dtype": dtype_name(h.out_dtype)}, children={"inner": h.inner})


def _build(meta: dict, arrays: dict, children: dict) -> HadamardRows:
    seed = need_int(meta.get("seed"), "rotation seed", 0, (1 << 63) - 1)
    out = need_float_dtype(meta.get("out_dtype"))
    inner = children.get("inner")
    need(inner is not None and hasattr(inner, "decode"), "rotated rows need their inner rows")
    width = int(inner.shape[1])
    need(width >= 1 and width & (width - 1) == 0, f"rotated rows of width {width}: not a power of two")
    return HadamardRows(inner, seed, out)


WIRE = WireEncoding("hadamard", HadamardRows, _parts, _build)
