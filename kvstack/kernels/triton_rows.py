"""Triton building blocks shared by the kernels: read a tile of rows, packed or dense, as float32.

The packed layout is :mod:`kvstack.rows.pack`'s: code ``i`` of a byte sits at bits
``[b*i, b*i+b)`` and belongs to channel ``(8/b)*j + i`` of byte ``j``. Unpacking is a few
shifts and interleaves in registers, so a tile of keys costs its packed bytes in memory
traffic, plus its scales - the point of reading the cache without dequantizing it first.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def unpack_tile(b, BITS: tl.constexpr):
    """``int32 [N, D*BITS/8]`` bytes -> ``int32 [N, D]`` codes in channel order."""
    if BITS == 8:
        c = b
    elif BITS == 4:
        c = tl.interleave(b & 15, b >> 4)
    else:
        c = tl.interleave(tl.interleave(b & 3, (b >> 4) & 3), tl.interleave((b >> 2) & 3, b >> 6))
    return c


@triton.jit
def load_rows(
    PTR, S_PTR, Z_PTR, rows, local, gstart, mask,
    D: tl.constexpr, BITS: tl.constexpr, GROUP: tl.constexpr, CHANNEL: tl.constexpr, SYM: tl.constexpr,
):
    """Float32 ``[N, D]`` tile of ``rows`` (``local``: index inside the segment; ``gstart``: its first scale row).

    ``BITS == 16`` reads dense rows. Otherwise codes are unpacked and scaled:
    symmetric ``(q - 2**(b-1)) * s``, asymmetric ``q * s + z``, with per-token groups
    (``CHANNEL`` false: ``D // GROUP`` scales per row) or per-channel groups of ``GROUP``
    tokens inside the segment (``CHANNEL`` true: one scale row of ``D`` per group).
    """
    cols = tl.arange(0, D)
    if BITS == 16:
        x = tl.load(PTR + rows[:, None] * D + cols[None, :], mask=mask[:, None], other=0.0).to(tl.float32)
    else:
        W: tl.constexpr = D * BITS // 8
        bcols = tl.arange(0, W)
        b = tl.load(PTR + rows[:, None] * W + bcols[None, :], mask=mask[:, None], other=0).to(tl.int32)
        c = unpack_tile(b, BITS)
        if CHANNEL:
            sidx = (gstart + local // GROUP)[:, None] * D + cols[None, :]
            s = tl.load(S_PTR + sidx, mask=mask[:, None], other=0.0).to(tl.float32)
            if not SYM:
                z = tl.load(Z_PTR + sidx, mask=mask[:, None], other=0.0).to(tl.float32)
        else:
            # one load per group, broadcast in registers (not one gather per element)
            G: tl.constexpr = D // GROUP
            N: tl.constexpr = rows.shape[0]
            gidx = rows[:, None] * G + tl.arange(0, G)[None, :]
            s = tl.load(S_PTR + gidx, mask=mask[:, None], other=0.0).to(tl.float32)
            s = tl.reshape(tl.broadcast_to(s[:, :, None], (N, G, GROUP)), (N, D))
            if not SYM:
                z = tl.load(Z_PTR + gidx, mask=mask[:, None], other=0.0).to(tl.float32)
                z = tl.reshape(tl.broadcast_to(z[:, :, None], (N, G, GROUP)), (N, D))
        if SYM:
            x = (c - (1 << (BITS - 1))).to(tl.float32) * s
        else:
            x = c.to(tl.float32) * s + z
    return x


@triton.jit
def fp16_up(x):
    """The smallest float16 >= ``x`` (float32): scales never shrink the range they cover."""
    h = x.to(tl.float16)
    hb = h.to(tl.int16, bitcast=True)
    nxt = tl.where(hb >= 0, hb + 1, hb - 1)
    nxt = tl.where(hb == -32768, 1, nxt).to(tl.int16)
    return tl.where(h.to(tl.float32) < x, nxt.to(tl.float16, bitcast=True), h)


@triton.jit
def fp16_down(x):
    """The largest float16 <= ``x`` (float32): offsets never sit above the group minimum."""
    h = x.to(tl.float16)
    hb = h.to(tl.int16, bitcast=True)
    nxt = tl.where(hb > 0, hb - 1, hb + 1)
    nxt = tl.where(hb == 0, -32767, nxt).to(tl.int16)
    return tl.where(h.to(tl.float32) > x, nxt.to(tl.float16, bitcast=True), h)


@triton.jit
def round_half_even(y):
    """``torch.round`` semantics (ties to even), built from floor so every backend agrees."""
    r = tl.floor(y + 0.5)
    odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
    return tl.where((r - y == 0.5) & odd, r - 1.0, r)


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(1, int(n)))
