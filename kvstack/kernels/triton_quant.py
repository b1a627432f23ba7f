"""Fused quantize-and-pack and unpack-and-dequantize kernels (INT8/INT4/INT2).

One pass over the input: group min/max, fp16 scales rounded outward (as
:class:`~kvstack.stages.quant_rows.QuantRows` does, so codes and scales equal the
PyTorch reference bit for bit), round-half-even codes, and packing into bytes in
registers. Per-token groups take a tile of rows per program; per-channel groups
(KIVI keys) take one group of tokens of one segment per program, so no group ever
crosses a head.
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
                 RINT: tl.constexpr):
    """Encode ``x [N, D]`` and store its packed codes in the rows ``rows`` of ``C``."""
    packed = _pack(_encode(x, inv, z, BITS, SYM, RINT), N, D, BITS)
    W: tl.constexpr = D * BITS // 8
    tl.store(C + rows[:, None] * W + tl.arange(0, W)[None, :], packed, mask=mask[:, None])


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
    _store_codes(C, x, inv, z, rows, mask, BLOCK_N, D, BITS, SYM, RINT)


@triton.jit
def _quant_channel_kernel(
    X, C, S, Z, STARTS, LENS, GSTARTS,
    D: tl.constexpr, BITS: tl.constexpr, GROUP: tl.constexpr, G_PAD: tl.constexpr, SYM: tl.constexpr,
    RINT: tl.constexpr,
):
    gi = tl.program_id(0)  # on the x axis: a long segment may have more than 65,535 groups
    seg = tl.program_id(1)
    n = tl.load(LENS + seg)
    if gi * GROUP < n:
        local = gi * GROUP + tl.arange(0, G_PAD)
        mask = (local < n) & (tl.arange(0, G_PAD) < GROUP)
        rows = tl.load(STARTS + seg) + local
        cols = tl.arange(0, D)
        x = tl.load(X + rows[:, None] * D + cols[None, :], mask=mask[:, None], other=0.0).to(tl.float32)
        lo = tl.min(tl.where(mask[:, None], x, float("inf")), 0)
        hi = tl.max(tl.where(mask[:, None], x, float("-inf")), 0)
        scale, zero = _fit(lo, hi, BITS, SYM)
        grow = tl.load(GSTARTS + seg) + gi
        tl.store(S + grow * D + cols, scale)
        inv = tl.broadcast_to(_reciprocal(scale)[None, :], (G_PAD, D))
        if SYM:
            z = inv
        else:
            tl.store(Z + grow * D + cols, zero)
            z = tl.broadcast_to(zero.to(tl.float32)[None, :], (G_PAD, D))
        _store_codes(C, x, inv, z, rows, mask, G_PAD, D, BITS, SYM, RINT)


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
    segments: Segments | None = None, block_n: int = 32, num_warps: int = 4,
) -> PackedRows:
    """Quantize ``[rows, D]`` into packed codes + fp16 scales (+ zeros) in one pass."""
    n, d = x.shape
    x = x.contiguous()
    codes = torch.empty(n, d * bits // 8, dtype=torch.uint8, device=x.device)
    if axis == "token":
        scales = torch.empty(n, d // group, dtype=torch.float16, device=x.device)
        zeros = None if sym else torch.empty_like(scales)
        _quant_token_kernel[(triton.cdiv(n, block_n),)](
            x, codes, scales, scales if sym else zeros, n,
            D=d, BITS=bits, GROUP=group, SYM=sym, BLOCK_N=block_n, RINT=x.is_cuda, num_warps=num_warps,
        )
    else:
        segments = segments or Segments.from_lengths([n], group, device=x.device)
        groups = int(((segments.lengths.long() + group - 1) // group).sum())
        scales = torch.empty(groups, d, dtype=torch.float16, device=x.device)
        zeros = None if sym else torch.empty_like(scales)
        _quant_channel_kernel[(max(1, math.ceil(segments.max_length / group)), segments.count)](
            x, codes, scales, scales if sym else zeros, segments.starts, segments.lengths, segments.group_starts,
            D=d, BITS=bits, GROUP=group, G_PAD=next_pow2(group), SYM=sym, RINT=x.is_cuda, num_warps=num_warps,
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
