"""Fused quantize-and-pack and unpack-and-dequantize kernels (INT8/INT4/INT2).

One pass over the input: group min/max, fp16 scales rounded outward (as
:class:`~kvstack.rows.quant.QuantRows` does, so codes and scales equal the
PyTorch reference bit for bit), round-half-even codes, and packing into bytes in
registers. Per-token groups take a tile of rows per program; per-channel groups
(KIVI keys) take a block of channels of a few groups of tokens of one segment per
program, so no group ever crosses a head, and with one warp a program the min/max over
a group's tokens never leaves the warp (no shared-memory round trip, no barrier).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from kvstack.kernels.layout import PackedRows, Segments
from kvstack.kernels.triton_rows import fp16_down, fp16_up, load_rows, next_pow2, round_half_even


@triton.jit
def _round(y, RINT: tl.constexpr):
    """Round half to even: one ``cvt.rni`` on the GPU; built from floor in the interpreter."""
    if RINT:
        r = libdevice.rint(y)
    else:
        r = round_half_even(y)
    return r


@triton.jit
def _encode(x, inv, z, BITS: tl.constexpr, SYM: tl.constexpr, RINT: tl.constexpr):
    """Codes of ``x`` given the per-element reciprocal scale ``inv`` (and zero ``z``), as int32."""
    if SYM:
        half: tl.constexpr = 1 << (BITS - 1)
        q = tl.clamp(_round(x * inv, RINT), -(half - 1.0), half - 1.0) + half
    else:
        q = tl.clamp(_round((x - z) * inv, RINT), 0.0, (1 << BITS) - 1.0)
    return q.to(tl.int32)


@triton.jit
def _reciprocal(scale):
    """``1 / scale`` rounded exactly (a zero scale, from a constant group, maps to 1)."""
    s = scale.to(tl.float32)
    return tl.math.div_rn(1.0, tl.where(s > 0.0, s, 1.0))


@triton.jit
def _pack(q, N: tl.constexpr, D: tl.constexpr, BITS: tl.constexpr):
    """``int32 [N, D]`` codes -> ``uint8 [N, D*BITS/8]`` (code i of a byte at bits ``BITS*i``)."""
    P: tl.constexpr = 8 // BITS
    if P == 1:
        packed = q
    else:
        shifts = tl.arange(0, P) * BITS
        packed = tl.sum(tl.reshape(q, (N, D // P, P)) << shifts[None, None, :], 2)
    return packed.to(tl.uint8)


@triton.jit
def _store_codes(C, x, inv, z, rows, mask, N: tl.constexpr, D: tl.constexpr, BITS: tl.constexpr, SYM: tl.constexpr,
                 RINT: tl.constexpr, ROW_BYTES: tl.constexpr, col0):
    """Encode ``x [N, D]`` and store its packed codes at byte column ``col0`` of rows ``rows`` of ``C``."""
    packed = _pack(_encode(x, inv, z, BITS, SYM, RINT), N, D, BITS)
    W: tl.constexpr = D * BITS // 8
    tl.store(C + rows[:, None] * ROW_BYTES + col0 + tl.arange(0, W)[None, :], packed, mask=mask[:, None])


@triton.jit
def _fit(lo, hi, BITS: tl.constexpr, SYM: tl.constexpr):
    """fp16 (scale, zero) of groups with minimum ``lo`` and maximum ``hi``, rounded outward."""
    if SYM:
        scale = fp16_up(tl.math.div_rn(tl.maximum(tl.abs(lo), tl.abs(hi)), (1 << (BITS - 1)) - 1.0))
        zero = scale
    else:
        zero = fp16_down(lo)
        scale = fp16_up(tl.math.div_rn(hi - zero.to(tl.float32), (1 << BITS) - 1.0))
    return scale, zero


@triton.jit
def _quant_token_kernel(
    X, C, S, Z, n_rows,
    D: tl.constexpr, BITS: tl.constexpr, GROUP: tl.constexpr, SYM: tl.constexpr, BLOCK_N: tl.constexpr,
    RINT: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = rows < n_rows
    cols = tl.arange(0, D)
    x = tl.load(X + rows[:, None] * D + cols[None, :], mask=mask[:, None], other=0.0).to(tl.float32)
    G: tl.constexpr = D // GROUP
    xg = tl.reshape(x, (BLOCK_N, G, GROUP))
    scale, zero = _fit(tl.min(xg, 2), tl.max(xg, 2), BITS, SYM)
    gcols = tl.arange(0, G)
    tl.store(S + rows[:, None] * G + gcols[None, :], scale, mask=mask[:, None])
    inv = tl.reshape(tl.broadcast_to(_reciprocal(scale)[:, :, None], (BLOCK_N, G, GROUP)), (BLOCK_N, D))
    if SYM:
        z = inv
    else:
        tl.store(Z + rows[:, None] * G + gcols[None, :], zero, mask=mask[:, None])
        z = tl.reshape(tl.broadcast_to(zero.to(tl.float32)[:, :, None], (BLOCK_N, G, GROUP)), (BLOCK_N, D))
    _store_codes(C, x, inv, z, rows, mask, BLOCK_N, D, BITS, SYM, RINT, D * BITS // 8, 0)


@triton.jit
def _channel_tile(X, seg_start, n, gi, t0, cols,
                  D: tl.constexpr, GROUP: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """Rows ``t0 .. t0 + BLOCK_T`` of group ``gi`` (channels ``cols``) in the input dtype, their mask and indices.

    Rows past the group read its first row again (a cache hit), so min and max need no
    masking and no constant of the input dtype.
    """
    t = t0 + tl.arange(0, BLOCK_T)
    local = gi * GROUP + t
    mask = (t < GROUP) & (local < n)
    rows = seg_start + tl.where(mask, local, gi * GROUP)
    x = tl.load(X + rows[:, None] * D + cols[None, :])
    return x, rows, mask


@triton.jit
def _quant_channel_kernel(
    X, C, S, Z, STARTS, LENS, GSTARTS,
    D: tl.constexpr, BITS: tl.constexpr, GROUP: tl.constexpr, G_PAD: tl.constexpr, SYM: tl.constexpr,
    RINT: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, GROUPS_PER_PROGRAM: tl.constexpr,
):
    """``GROUPS_PER_PROGRAM`` groups of one segment, ``BLOCK_D`` channels of them.

    Min and max are taken in the input dtype (exact: they select an element), so the rows
    a thread holds stay half-size while the reduction runs. A group that fits one
    ``BLOCK_T``-row tile (``BLOCK_T == G_PAD``) is read once; a taller one is read twice
    (min/max, then codes; the second read hits the cache), so no thread holds more than
    one tile.
    """
    seg = tl.program_id(1)
    n = tl.load(LENS + seg)
    seg_start = tl.load(STARTS + seg)
    g0 = tl.load(GSTARTS + seg)
    cols = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    ROW_BYTES: tl.constexpr = D * BITS // 8
    col0 = tl.program_id(2) * (BLOCK_D * BITS // 8)
    first = tl.program_id(0) * GROUPS_PER_PROGRAM  # x axis: a long segment may have more than 65,535 groups
    last = tl.minimum(first + GROUPS_PER_PROGRAM, tl.cdiv(n, GROUP))
    for gi in range(first, last):
        x, rows, mask = _channel_tile(X, seg_start, n, gi, 0, cols, D, GROUP, BLOCK_T, BLOCK_D)
        lo_t = x
        hi_t = x
        for t0 in tl.static_range(BLOCK_T, G_PAD, BLOCK_T):  # taller groups: elementwise, then one reduction
            xt, _, _ = _channel_tile(X, seg_start, n, gi, t0, cols, D, GROUP, BLOCK_T, BLOCK_D)
            lo_t = tl.minimum(lo_t, xt)
            hi_t = tl.maximum(hi_t, xt)
        scale, zero = _fit(tl.min(lo_t, 0).to(tl.float32), tl.max(hi_t, 0).to(tl.float32), BITS, SYM)
        tl.store(S + (g0 + gi) * D + cols, scale)
        if not SYM:
            tl.store(Z + (g0 + gi) * D + cols, zero)
        inv = tl.broadcast_to(_reciprocal(scale)[None, :], (BLOCK_T, BLOCK_D))
        if SYM:
            z = inv
        else:
            z = tl.broadcast_to(zero.to(tl.float32)[None, :], (BLOCK_T, BLOCK_D))
        if BLOCK_T == G_PAD:  # the tile is still in registers
            _store_codes(C, x.to(tl.float32), inv, z, rows, mask, BLOCK_T, BLOCK_D, BITS, SYM, RINT, ROW_BYTES, col0)
        else:
            for t0 in tl.static_range(0, G_PAD, BLOCK_T):
                xt, rt, mt = _channel_tile(X, seg_start, n, gi, t0, cols, D, GROUP, BLOCK_T, BLOCK_D)
                _store_codes(C, xt.to(tl.float32), inv, z, rt, mt, BLOCK_T, BLOCK_D, BITS, SYM, RINT, ROW_BYTES,
                             col0)


@triton.jit
def _dequant_kernel(
    C, S, Z, OUT, STARTS, LENS, GSTARTS,
    D: tl.constexpr, BITS: tl.constexpr, GROUP: tl.constexpr, CHANNEL: tl.constexpr, SYM: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    local = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # x axis: up to 2**31 - 1 blocks
    seg = tl.program_id(1)
    mask = local < tl.load(LENS + seg)
    rows = tl.load(STARTS + seg) + local
    x = load_rows(C, S, Z, rows, local, tl.load(GSTARTS + seg), mask, D, BITS, GROUP, CHANNEL, SYM)
    tl.store(OUT + rows[:, None] * D + tl.arange(0, D)[None, :], x.to(OUT.dtype.element_ty), mask=mask[:, None])


def quantize(
    x: torch.Tensor, bits: int, group: int, axis: str = "token", sym: bool = False,
    segments: Segments | None = None, block_n: int = 32, num_warps: int | None = None,
    block_t: int = 32, block_d: int = 128, groups_per_program: int = 1,
) -> PackedRows:
    """Quantize ``[rows, D]`` into packed codes + fp16 scales (+ zeros) in one pass.

    Per-token groups: ``block_n`` rows a program. Per-channel groups: ``block_d`` channels
    of ``groups_per_program`` groups a program, read ``block_t`` rows at a time. Defaults
    are the configuration chosen for an H100 (benchmarks/RESULTS.md); every configuration
    gives the same bits.
    """
    n, d = x.shape
    x = x.contiguous()
    codes = torch.empty(n, d * bits // 8, dtype=torch.uint8, device=x.device)
    if axis == "token":
        scales = torch.empty(n, d // group, dtype=torch.float16, device=x.device)
        zeros = None if sym else torch.empty_like(scales)
        _quant_token_kernel[(triton.cdiv(n, block_n),)](
            x, codes, scales, scales if sym else zeros, n,
            D=d, BITS=bits, GROUP=group, SYM=sym, BLOCK_N=block_n, RINT=x.is_cuda, num_warps=num_warps or 4,
        )
    else:
        segments = segments or Segments.from_lengths([n], group, device=x.device)
        groups = int(((segments.lengths.long() + group - 1) // group).sum())
        scales = torch.empty(groups, d, dtype=torch.float16, device=x.device)
        zeros = None if sym else torch.empty_like(scales)
        block_d = min(block_d, d)
        g_pad = next_pow2(group)
        per = max(1, groups_per_program)
        grid = (max(1, math.ceil(segments.max_length / (group * per))), segments.count, d // block_d)
        _quant_channel_kernel[grid](
            x, codes, scales, scales if sym else zeros, segments.starts, segments.lengths, segments.group_starts,
            D=d, BITS=bits, GROUP=group, G_PAD=g_pad, SYM=sym, RINT=x.is_cuda, BLOCK_T=min(next_pow2(block_t), g_pad),
            BLOCK_D=block_d, GROUPS_PER_PROGRAM=per, num_warps=num_warps or 2,
        )
    return PackedRows(codes, scales, zeros, bits, group, axis, d)


def dequantize(
    p: PackedRows, segments: Segments | None = None, dtype: torch.dtype = torch.float16,
    block_n: int = 64, num_warps: int = 4,
) -> torch.Tensor:
    """Unpack and scale every row into ``dtype [rows, D]``."""
    n = p.codes.shape[0]
    segments = segments or Segments.from_lengths([n], p.group if p.axis == "channel" else 0, device=p.codes.device)
    out = torch.empty(n, p.dim, dtype=dtype, device=p.codes.device)
    zeros = p.zeros if p.zeros is not None else p.scales
    _dequant_kernel[(max(1, math.ceil(segments.max_length / block_n)), segments.count)](
        p.codes, p.scales, zeros, out, segments.starts, segments.lengths, segments.group_starts,
        D=p.dim, BITS=p.bits, GROUP=p.group, CHANNEL=p.axis == "channel", SYM=p.zeros is None,
        BLOCK_N=block_n, num_warps=num_warps,
    )
    return out
