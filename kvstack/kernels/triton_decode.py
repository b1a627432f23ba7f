"""Decode attention straight from packed INT8/INT4/INT2 rows (flash-decoding, GQA-aware).

One program takes one (sequence, KV head) segment and one slice of its rows: it unpacks
keys and values tile by tile in registers, scores the *whole query group* of that KV
head against them (the query heads sharing the KV head, times the new query tokens, are
the rows of one small matrix product), and keeps an online softmax. Slicing the rows
("split-K") is what lets a single long sequence fill every multiprocessor. A second
pass merges the slices by their log-sum-exp. Rows of the full-precision residual window
(and the dense tail of generated tokens) go through the same kernel as dense rows and
are merged in the same pass, so a half-quantized cache is read once, without copies.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from kvstack.kernels.layout import PackedRows, Segments
from kvstack.kernels.triton_rows import next_pow2

LOG2E = 1.4426950408889634


@triton.jit
def _codes(b, i: tl.constexpr, BITS: tl.constexpr):
    """Phase ``i`` codes of an int32 byte tile as exact float16, without an int-to-float instruction.

    ``0x6400 | c`` read as float16 is ``1024 + c`` (exponent 10, so the mantissa counts
    units); subtracting 1024 is exact. This replaces the slow I2F conversion, the
    instruction that bounds a naive unpacking kernel.
    """
    c = (b >> (BITS * i)) & ((1 << BITS) - 1)
    return (c | 0x6400).to(tl.int16).to(tl.float16, bitcast=True) - 1024.0


@triton.jit
def _phase(q0, q1, q2, q3, i: tl.constexpr):
    if i == 0:
        x = q0
    elif i == 1:
        x = q1
    elif i == 2:
        x = q2
    else:
        x = q3
    return x


@triton.jit
def _load_phases(Q, base, offs_m, M: tl.constexpr, D: tl.constexpr, P: tl.constexpr):
    """Query rows split by channel phase: ``q_i[m, j] = q[m, P*j + i]`` (float32), up to 4 phases."""
    jj = tl.arange(0, D // P)
    mask = offs_m[:, None] < M
    ptr = Q + (base + offs_m[:, None]) * D + P * jj[None, :]
    q0 = tl.load(ptr, mask=mask, other=0.0).to(tl.float32)
    q1 = q0
    q2 = q0
    q3 = q0
    if P > 1:
        q1 = tl.load(ptr + 1, mask=mask, other=0.0).to(tl.float32)
    if P > 2:
        q2 = tl.load(ptr + 2, mask=mask, other=0.0).to(tl.float32)
        q3 = tl.load(ptr + 3, mask=mask, other=0.0).to(tl.float32)
    return q0, q1, q2, q3


@triton.jit
def _packed_scores(
    q0, q1, q2, q3, K, KS, KZ, rows, mask, srow,
    D: tl.constexpr, BITS: tl.constexpr, GROUP: tl.constexpr, CHANNEL: tl.constexpr, SYM: tl.constexpr,
):
    """``q . k`` for a tile of packed keys with the scales factored out of the matrix product.

    Per-channel scales (constant over the tile's group of tokens) fold into the query:
    ``sum_c q_c (s_c c + z_c) = (q * s) . c + q . z``. Per-token groups scale each group's
    partial product: ``sum_g s_tg (q_g . c_t) + z_tg sum(q_g)``. Either way the codes go
    into the tensor cores as they are; no element of the key is ever dequantized.
    """
    P: tl.constexpr = 8 // BITS
    DP: tl.constexpr = D // P
    jj = tl.arange(0, DP)
    b = tl.load(K + rows[:, None] * DP + jj[None, :], mask=mask[:, None], other=0).to(tl.int32)
    HALF: tl.constexpr = 1 << (BITS - 1)
    s = tl.zeros([q0.shape[0], rows.shape[0]], tl.float32)
    if CHANNEL:
        bias = tl.zeros([q0.shape[0]], tl.float32)
        for i in tl.static_range(P):
            qi = _phase(q0, q1, q2, q3, i)
            sc = tl.load(KS + srow * D + P * jj + i).to(tl.float32)
            s += tl.dot((qi * sc[None, :]).to(tl.float16), tl.trans(_codes(b, i, BITS)))
            if SYM:
                bias -= HALF * tl.sum(qi * sc[None, :], 1)
            else:
                bias += tl.sum(qi * tl.load(KZ + srow * D + P * jj + i).to(tl.float32)[None, :], 1)
        s += bias[:, None]
    else:
        G: tl.constexpr = D // GROUP
        for i in tl.static_range(P):
            c = tl.trans(_codes(b, i, BITS))
            qi = _phase(q0, q1, q2, q3, i)
            for g in tl.static_range(G):
                sg = tl.load(KS + rows * G + g, mask=mask, other=0.0).to(tl.float32)
                qg = tl.where(((P * jj + i) // GROUP == g)[None, :], qi, 0.0)
                s += tl.dot(qg.to(tl.float16), c) * sg[None, :]
                qsum = tl.sum(qg, 1)
                if SYM:
                    s -= HALF * qsum[:, None] * sg[None, :]
                else:
                    zg = tl.load(KZ + rows * G + g, mask=mask, other=0.0).to(tl.float32)
                    s += qsum[:, None] * zg[None, :]
    return s


@triton.jit
def _packed_values(
    p, V, VS, VZ, rows, mask, srow, i: tl.constexpr,
    D: tl.constexpr, BITS: tl.constexpr, GROUP: tl.constexpr, CHANNEL: tl.constexpr, SYM: tl.constexpr,
):
    """``p @ v`` for channel phase ``i`` of a tile of packed values, scales factored out likewise."""
    P: tl.constexpr = 8 // BITS
    DP: tl.constexpr = D // P
    jj = tl.arange(0, DP)
    HALF: tl.constexpr = 1 << (BITS - 1)
    b = tl.load(V + rows[:, None] * DP + jj[None, :], mask=mask[:, None], other=0).to(tl.int32)
    c = _codes(b, i, BITS)
    psum = tl.sum(p, 1)
    if CHANNEL:
        sc = tl.load(VS + srow * D + P * jj + i).to(tl.float32)
        out = tl.dot(p.to(tl.float16), c) * sc[None, :]
        if SYM:
            out -= HALF * psum[:, None] * sc[None, :]
        else:
            out += psum[:, None] * tl.load(VZ + srow * D + P * jj + i).to(tl.float32)[None, :]
    else:
        G: tl.constexpr = D // GROUP
        out = tl.zeros([p.shape[0], DP], tl.float32)
        for g in tl.static_range(G):
            sg = tl.load(VS + rows * G + g, mask=mask, other=0.0).to(tl.float32)
            ps = p * sg[None, :]
            part = tl.dot(ps.to(tl.float16), c)
            if SYM:
                part -= HALF * tl.sum(ps, 1)[:, None]
            else:
                zg = tl.load(VZ + rows * G + g, mask=mask, other=0.0).to(tl.float32)
                part += tl.sum(p * zg[None, :], 1)[:, None]
            out += tl.where(((P * jj + i) // GROUP == g)[None, :], part, 0.0)
    return out


@triton.jit
def _split_kernel(
    Q, K, KS, KZ, V, VS, VZ,
    STARTS, LENS, GSTARTS,
    O_PART, L_PART,
    qk_scale, chunk, splits_total, split_offset,
    M: tl.constexpr, M_PAD: tl.constexpr, QM: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr,
    K_BITS: tl.constexpr, K_GROUP: tl.constexpr, K_CHANNEL: tl.constexpr, K_SYM: tl.constexpr,
    V_BITS: tl.constexpr, V_GROUP: tl.constexpr, V_CHANNEL: tl.constexpr, V_SYM: tl.constexpr,
    CAUSAL_TAIL: tl.constexpr, IEEE: tl.constexpr,
):
    seg = tl.program_id(0)
    split = tl.program_id(1)
    start = tl.load(STARTS + seg)
    n = tl.load(LENS + seg)
    g0 = tl.load(GSTARTS + seg)
    offs_m = tl.arange(0, M_PAD)
    PK: tl.constexpr = 1 if K_BITS == 16 else 8 // K_BITS
    PV: tl.constexpr = 1 if V_BITS == 16 else 8 // V_BITS
    DV: tl.constexpr = D // PV
    q0, q1, q2, q3 = _load_phases(Q, seg * M, offs_m, M, D, PK)
    m_i = tl.full([M_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([M_PAD], tl.float32)
    acc0 = tl.zeros([M_PAD, DV], tl.float32)
    acc1 = tl.zeros([M_PAD, DV], tl.float32)
    acc2 = tl.zeros([M_PAD, DV], tl.float32)
    acc3 = tl.zeros([M_PAD, DV], tl.float32)
    lo = split * chunk
    hi = tl.minimum(lo + chunk, n)
    cols = tl.arange(0, D)
    for b0 in range(lo, hi, BLOCK_N):
        local = b0 + tl.arange(0, BLOCK_N)
        mask = local < hi
        rows = start + local
        if K_BITS == 16:
            k = tl.load(K + rows[:, None] * D + cols[None, :], mask=mask[:, None], other=0.0)
            if IEEE:  # float32 rows: exact products, not TF32
                s = tl.dot(q0, tl.trans(k.to(tl.float32)), input_precision="ieee")
            else:
                s = tl.dot(q0.to(k.dtype), tl.trans(k))
        else:
            s = _packed_scores(q0, q1, q2, q3, K, KS, KZ, rows, mask, g0 + b0 // K_GROUP,
                               D, K_BITS, K_GROUP, K_CHANNEL, K_SYM)
        s = s * qk_scale
        valid = mask[None, :]
        if CAUSAL_TAIL:
            # query token t (row r = g * QM + t) is the (QM - t)-th last row of the tail
            valid = valid & (local[None, :] <= (n - QM + offs_m % QM)[:, None])
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new
        if V_BITS == 16:
            v = tl.load(V + rows[:, None] * D + cols[None, :], mask=mask[:, None], other=0.0)
            if IEEE:
                acc0 = acc0 * alpha[:, None] + tl.dot(p, v.to(tl.float32), input_precision="ieee")
            else:
                acc0 = acc0 * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        else:
            vrow = g0 + b0 // V_GROUP
            acc0 = acc0 * alpha[:, None] + _packed_values(
                p, V, VS, VZ, rows, mask, vrow, 0, D, V_BITS, V_GROUP, V_CHANNEL, V_SYM)
            if PV > 1:
                acc1 = acc1 * alpha[:, None] + _packed_values(
                    p, V, VS, VZ, rows, mask, vrow, 1, D, V_BITS, V_GROUP, V_CHANNEL, V_SYM)
            if PV > 2:
                acc2 = acc2 * alpha[:, None] + _packed_values(
                    p, V, VS, VZ, rows, mask, vrow, 2, D, V_BITS, V_GROUP, V_CHANNEL, V_SYM)
                acc3 = acc3 * alpha[:, None] + _packed_values(
                    p, V, VS, VZ, rows, mask, vrow, 3, D, V_BITS, V_GROUP, V_CHANNEL, V_SYM)
    has = l_i > 0.0
    inv = 1.0 / tl.where(has, l_i, 1.0)
    lse = tl.where(has, m_i + tl.log2(tl.where(has, l_i, 1.0)), float("-inf"))
    slot = seg * splits_total + split_offset + split
    jj = tl.arange(0, DV)
    optr = O_PART + (slot * M_PAD + offs_m[:, None]) * D + PV * jj[None, :]
    omask = offs_m[:, None] < M
    tl.store(optr, acc0 * inv[:, None], mask=omask)
    if PV > 1:
        tl.store(optr + 1, acc1 * inv[:, None], mask=omask)
    if PV > 2:
        tl.store(optr + 2, acc2 * inv[:, None], mask=omask)
        tl.store(optr + 3, acc3 * inv[:, None], mask=omask)
    tl.store(L_PART + slot * M_PAD + offs_m, lse)


@triton.jit
def _combine_kernel(
    O_PART, L_PART, OUT, splits_total,
    M: tl.constexpr, M_PAD: tl.constexpr, D: tl.constexpr, S_PAD: tl.constexpr,
):
    seg = tl.program_id(0)
    offs_s = tl.arange(0, S_PAD)
    offs_m = tl.arange(0, M_PAD)
    cols = tl.arange(0, D)
    lse = tl.load(
        L_PART + (seg * splits_total + offs_s[:, None]) * M_PAD + offs_m[None, :],
        mask=offs_s[:, None] < splits_total, other=float("-inf"),
    )
    top = tl.max(lse, 0)
    top = tl.where(top == float("-inf"), 0.0, top)
    denom = tl.sum(tl.exp2(lse - top[None, :]), 0)
    acc = tl.zeros([M_PAD, D], tl.float32)
    for s in range(0, splits_total):
        slot = seg * splits_total + s
        w = tl.exp2(tl.load(L_PART + slot * M_PAD + offs_m) - top)
        o = tl.load(O_PART + (slot * M_PAD + offs_m[:, None]) * D + cols[None, :], mask=offs_m[:, None] < M, other=0.0)
        acc += w[:, None] * o
    acc = acc / tl.where(denom > 0.0, denom, 1.0)[:, None]
    tl.store(OUT + (seg * M + offs_m[:, None]) * D + cols[None, :], acc, mask=offs_m[:, None] < M)


def _rows_args(x: PackedRows | torch.Tensor) -> tuple:
    """(rows, scales, zeros, bits, group, channel, sym) for the kernel; dense rows are 16-bit."""
    if isinstance(x, torch.Tensor):
        return x, x, x, 16, 1, False, True
    z = x.zeros if x.zeros is not None else x.scales
    return x.codes, x.scales, z, x.bits, x.group, x.axis == "channel", x.zeros is None


def _splits(segments: int, max_len: int, block_n: int, target_programs: int) -> tuple[int, int]:
    """(number of slices, rows per slice): enough programs to fill the GPU, whole tiles per slice."""
    tiles = max(1, math.ceil(max_len / block_n))
    splits = max(1, min(tiles, math.ceil(target_programs / max(1, segments))))
    chunk = math.ceil(tiles / splits) * block_n
    return math.ceil(max(1, max_len) / chunk), chunk


def decode_attention(
    q: torch.Tensor,
    keys: PackedRows | torch.Tensor,
    values: PackedRows | torch.Tensor,
    segments: Segments,
    tail_k: torch.Tensor | None = None,
    tail_v: torch.Tensor | None = None,
    tail: Segments | None = None,
    scale: float | None = None,
    query_tokens: int = 1,
    block_n: int = 64,
    num_warps: int = 4,
    num_stages: int = 3,
    target_programs: int | None = None,
) -> torch.Tensor:
    """Attention of ``q [S, M, D]`` over each segment's packed (or dense) rows plus its dense tail.

    ``M`` rows of a segment are its query group (query heads of one KV head) times
    ``query_tokens`` new tokens, ordered ``g * query_tokens + t``; the new tokens are the
    last ``query_tokens`` rows of the tail and attend causally among themselves.
    Defaults are the configuration measured fastest on an H100 (benchmarks/RESULTS.md).
    Returns ``[S, M, D]`` in ``q.dtype``.
    """
    S, M, D = q.shape
    q = q.contiguous()
    m_pad = max(16, next_pow2(M))
    scale = D**-0.5 if scale is None else scale
    target = target_programs or 2 * torch.cuda.get_device_properties(q.device).multi_processor_count
    for rows in (keys, values):  # a tile must sit inside one group of a per-channel scale row
        if isinstance(rows, PackedRows) and rows.axis == "channel":
            block_n = min(block_n, rows.group)
    n_main, chunk = _splits(S, segments.max_length, block_n, target)
    n_tail, tail_chunk = (0, 0)
    if tail is not None:
        n_tail, tail_chunk = _splits(S, tail.max_length, block_n, max(S, target // 8))
    total = n_main + n_tail
    o_part = torch.empty(S * total * m_pad * D, dtype=torch.float32, device=q.device)
    l_part = torch.empty(S * total * m_pad, dtype=torch.float32, device=q.device)
    common = dict(M=M, M_PAD=m_pad, QM=query_tokens, D=D, BLOCK_N=block_n, num_warps=num_warps, num_stages=num_stages,
                  IEEE=q.dtype == torch.float32)
    k, ks, kz, kb, kg, kc, ksym = _rows_args(keys)
    v, vs, vz, vb, vg, vc, vsym = _rows_args(values)
    _split_kernel[(S, n_main)](
        q, k, ks, kz, v, vs, vz, segments.starts, segments.lengths, segments.group_starts, o_part, l_part,
        scale * LOG2E, chunk, total, 0,
        K_BITS=kb, K_GROUP=kg, K_CHANNEL=kc, K_SYM=ksym, V_BITS=vb, V_GROUP=vg, V_CHANNEL=vc, V_SYM=vsym,
        CAUSAL_TAIL=False, **common,
    )
    if tail is not None:
        _split_kernel[(S, n_tail)](
            q, tail_k, tail_k, tail_k, tail_v, tail_v, tail_v, tail.starts, tail.lengths, tail.group_starts,
            o_part, l_part, scale * LOG2E, tail_chunk, total, n_main,
            K_BITS=16, K_GROUP=1, K_CHANNEL=False, K_SYM=True, V_BITS=16, V_GROUP=1, V_CHANNEL=False, V_SYM=True,
            CAUSAL_TAIL=query_tokens > 1, **common,
        )
    out = torch.empty(S, M, D, dtype=q.dtype, device=q.device)
    _combine_kernel[(S,)](o_part, l_part, out, total, M=M, M_PAD=m_pad, D=D, S_PAD=next_pow2(total), num_warps=4)
    return out
