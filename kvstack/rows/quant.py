"""Rows stored as uniform round-to-nearest integer codes, packed in ``uint8``, with fp16 scales.

Format of :class:`QuantRows` (``n`` rows of ``d`` channels, ``b`` bits):

* ``codes``: ``uint8 [n, packed_width(d, b)]`` - each row's codes packed on their own
  (see :mod:`kvstack.rows.pack`).
* ``scales`` (and, asymmetric only, ``zeros``): ``float16``, one per group. With
  ``axis="token"`` a group is ``group`` consecutive channels of one token, shape
  ``[n, d // group]``; ``group`` must divide ``d`` (no padding: a RecipeError says which
  group sizes fit). With ``axis="channel"`` a group is ``group`` consecutive tokens of one
  channel *within one head*, shape ``[num_groups, d]``; each head's last group may hold
  fewer tokens, so no padding is needed.

Asymmetric: ``x ~ zero + q * scale`` with ``q`` in ``0..2**b-1``; ``zero`` is the group
minimum rounded *down* to fp16 (a float offset, as in KIVI, rather than an integer zero
point) and ``scale`` the step covering ``[zero, max]`` rounded *up* to fp16. Symmetric:
``x ~ (q - 2**(b-1)) * scale`` with ``q - 2**(b-1)`` in ``-(2**(b-1)-1)..2**(b-1)-1`` and
``scale = max|x| / (2**(b-1)-1)`` rounded up. Rounding the fp16 parameters outward means
no code is ever clamped, so every element is within ``scale / 2`` of its input (plus float
rounding): the property the tests check. ``nbytes`` is exactly codes + scales + zeros.

On the wire (kind ``quant``, :data:`WIRE` at the end of this module) the codes travel as
:class:`~kvstack.rows.encoding.Symbols`, so the entropy coders may code them symbol by symbol.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from kvstack.errors import InputError, RecipeError
from kvstack.rows.base import tensor_nbytes
from kvstack.rows.encoding import (
    Parts,
    Symbols,
    WireEncoding,
    dtype_name,
    need,
    need_float_dtype,
    need_int,
    need_tensor,
)
from kvstack.rows.groups import fp16_down, fp16_up, run_lengths, segment_ids, token_groups
from kvstack.rows.pack import SUPPORTED_BITS, pack_codes, packed_width, unpack_codes

AXES = ("token", "channel")


def check_settings(bits: int, group: int, axis: str) -> None:
    """Raise RecipeError unless ``bits``, ``group`` and ``axis`` describe a format that exists."""
    if bits not in SUPPORTED_BITS:
        widths = ", ".join(map(str, SUPPORTED_BITS))
        raise RecipeError(f"{bits}-bit quantization does not exist; bit widths: {widths}")
    if not isinstance(group, int) or isinstance(group, bool) or group <= 0:
        raise RecipeError(f"group={group!r} must be a positive whole number of elements, e.g. g64")
    if axis not in AXES:
        raise RecipeError(f"axis={axis!r} is not one of {', '.join(AXES)}")


def _expand(t: torch.Tensor, axis: str, group: int, gid: torch.Tensor | None) -> torch.Tensor:
    """Per-group values (scales or zeros) repeated to one per element, ``[n, d]``."""
    return t.repeat_interleave(group, dim=1) if axis == "token" else t.index_select(0, gid)


@dataclass(frozen=True, eq=False)
class QuantRows:
    """Rows as packed ``bits``-bit codes + fp16 scales (+ fp16 zeros); see the module docstring."""

    codes: torch.Tensor  # uint8 [n, packed_width(dim, bits)]
    scales: torch.Tensor  # float16, one per group
    zeros: torch.Tensor | None  # float16 like scales (asymmetric), None (symmetric)
    bits: int
    group: int
    axis: str
    dim: int
    out_dtype: torch.dtype
    segments: tuple[int, ...] | None = None  # rows per head (axis="channel" only)

    @property
    def select_requantizes(self) -> bool:
        """Channel-axis groups span tokens, so dropping rows means quantizing again (lossy)."""
        return self.axis == "channel"

    @classmethod
    def quantize(
        cls,
        rows: torch.Tensor,
        bits: int,
        group: int,
        axis: str = "token",
        sym: bool = False,
        segments: Sequence[int] | None = None,
        out_dtype: torch.dtype | None = None,
    ) -> QuantRows:
        """Quantize ``[n, d]`` rows. ``segments`` (rows per head) keep channel-axis groups inside heads."""
        check_settings(bits, group, axis)
        n, d = rows.shape
        x = rows.float()
        gid = None
        if axis == "token":
            if d % group:
                divisors = [g for g in range(1, d + 1) if d % g == 0]
                raise RecipeError(f"group={group} does not divide head_dim={d}; pick one of {divisors}")
            lo, hi = x.reshape(n, d // group, group).aminmax(dim=-1)
            segments = None
        else:
            segments = tuple(int(s) for s in segments) if segments is not None else (n,)
            if sum(segments) != n:
                raise InputError(f"segments {segments} cover {sum(segments)} rows, but there are {n}")
            gid, count = token_groups(segments, group, device=x.device)
            index = gid.unsqueeze(1).expand(n, d)
            lo = x.new_full((count, d), float("inf")).scatter_reduce(0, index, x, "amin")
            hi = x.new_full((count, d), float("-inf")).scatter_reduce(0, index, x, "amax")
        scales, zeros = _fit(lo, hi, bits, sym)
        # one reciprocal per group, then a multiply per element: what the GPU kernel does too
        # (kvstack.kernels), so both produce the same codes bit for bit
        sf = scales.float()
        inv = _expand(1.0 / torch.where(sf > 0, sf, torch.ones_like(sf)), axis, group, gid)
        if sym:
            half = 1 << (bits - 1)
            q = torch.round(x * inv).clamp_(-(half - 1), half - 1) + half
        else:
            q = torch.round((x - _expand(zeros.float(), axis, group, gid)) * inv).clamp_(0, (1 << bits) - 1)
        codes = pack_codes(q.to(torch.uint8), bits)
        return cls(codes, scales, zeros, bits, group, axis, d, out_dtype or rows.dtype, segments)

    # --- Encoded protocol ----------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.codes.shape[0]), self.dim)

    @property
    def dtype(self) -> torch.dtype:
        return self.out_dtype

    @property
    def sym(self) -> bool:
        return self.zeros is None

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.codes) + tensor_nbytes(self.scales) + tensor_nbytes(self.zeros)

    def dequantize(self) -> torch.Tensor:
        """The rows as float32 (no rounding to ``out_dtype``)."""
        gid = None
        if self.axis == "channel":
            gid, _ = token_groups(self.segments, self.group, device=self.codes.device)
        q = unpack_codes(self.codes, self.bits, self.dim).float()
        s = _expand(self.scales.float(), self.axis, self.group, gid)
        if self.sym:
            return (q - (1 << (self.bits - 1))) * s
        return q * s + _expand(self.zeros.float(), self.axis, self.group, gid)

    def decode(self) -> torch.Tensor:
        return self.dequantize().to(self.out_dtype)

    def select(self, rows: torch.Tensor) -> QuantRows:
        """Keep ``rows``. Per-token groups: the packed rows and their scales, no requantization.

        Per-channel groups span tokens, so dropping tokens changes them: the kept rows are
        dequantized and quantized again with the same settings, grouped within the heads
        the kept rows come from (one more rounding, each element again within scale/2).
        """
        rows = rows.to(self.codes.device).long()
        if self.axis == "token":
            pick = lambda t: None if t is None else t.index_select(0, rows)
            return replace(self, codes=pick(self.codes), scales=pick(self.scales), zeros=pick(self.zeros))
        new_segments = run_lengths(segment_ids(self.segments, device=rows.device)[rows])
        kept = self.dequantize().index_select(0, rows)
        return QuantRows.quantize(
            kept, self.bits, self.group, self.axis, self.sym, new_segments, out_dtype=self.out_dtype
        )


def _fit(
    lo: torch.Tensor, hi: torch.Tensor, bits: int, sym: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """fp16 scales (and zeros) for groups with minimum ``lo`` and maximum ``hi``, rounded outward."""
    if sym:
        scales, zeros = fp16_up(torch.maximum(lo.abs(), hi.abs()) / ((1 << (bits - 1)) - 1)), None
    else:
        zeros = fp16_down(lo)
        scales = fp16_up((hi - zeros.float()) / ((1 << bits) - 1))
    finite = bool(torch.isfinite(scales).all()) and (zeros is None or bool(torch.isfinite(zeros).all()))
    if not finite:
        raise InputError(
            "values are NaN/inf or beyond the float16 range of the scales (|x| > 65504); "
            "keep such layers unquantized, e.g. 'bf16@layerN' after the quantizer"
        )
    return scales, zeros


# --- wire encoding: packed codes as symbols, fp16 scales (+ zeros), the settings as meta ---------
def _parts(q: QuantRows) -> Parts:
    meta = {
        "bits": q.bits,
        "group": q.group,
        "axis": q.axis,
        "dim": q.dim,
        "out_dtype": dtype_name(q.out_dtype),
        "segments": None if q.segments is None else list(q.segments),
    }
    return Parts(meta=meta, arrays={"codes": Symbols(q.codes, q.bits, q.dim), "scales": q.scales, "zeros": q.zeros})


def _build(meta: dict, arrays: dict, children: dict) -> QuantRows:
    bits = meta.get("bits")
    need(bits in SUPPORTED_BITS, f"quantized rows with {bits!r} bits")
    axis = meta.get("axis")
    need(axis in AXES, f"quantization axis {axis!r}")
    dim = need_int(meta.get("dim"), "quantized dim", 1, 1 << 20)
    group = need_int(meta.get("group"), "quantization group", 1, 1 << 40)
    out = need_float_dtype(meta.get("out_dtype"))
    codes = arrays.get("codes")
    need(codes is not None and codes.dim() == 2, "quantized codes must be a 2-D tensor")
    n = int(codes.shape[0])
    need_tensor(codes, "codes", torch.uint8, (n, packed_width(dim, bits)))
    segments = meta.get("segments")
    if axis == "token":
        need(segments is None, "token-axis rows carry no segments")
        need(dim % group == 0, f"group {group} does not divide dim {dim}")
        shape = (n, dim // group)
    else:
        need(isinstance(segments, list) and len(segments) <= 1 << 20, "channel-axis rows need a segments list")
        segments = tuple(need_int(s, "segment length") for s in segments)
        need(sum(segments) == n, f"segments cover {sum(segments)} rows, codes have {n}")
        shape = (sum(-(-s // group) for s in segments), dim)
    scales = need_tensor(arrays.get("scales"), "scales", torch.float16, shape)
    zeros = arrays.get("zeros")
    if zeros is not None:
        need_tensor(zeros, "zeros", torch.float16, shape)
    return QuantRows(codes, scales, zeros, bits, group, axis, dim, out, segments)


WIRE = WireEncoding("quant", QuantRows, _parts, _build)
