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
from kvstack.kernels.triton_rows import load_rows, next_pow2

LOG2E = 1.4426950408889634


@triton.jit
def _split_kernel(
    Q, K, KS, KZ, V, VS, VZ,
    STARTS, LENS, GSTARTS,
    O_PART, L_PART,
    qk_scale, chunk, splits_total, split_offset,
    M: tl.constexpr, M_PAD: tl.constexpr, QM: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr,
    K_BITS: tl.constexpr, K_GROUP: tl.constexpr, K_CHANNEL: tl.constexpr, K_SYM: tl.constexpr,
    V_BITS: tl.constexpr, V_GROUP: tl.constexpr, V_CHANNEL: tl.constexpr, V_SYM: tl.constexpr,
    CAUSAL_TAIL: tl.constexpr,
):
    seg = tl.program_id(0)
    split = tl.program_id(1)
    start = tl.load(STARTS + seg)
    n = tl.load(LENS + seg)
    g0 = tl.load(GSTARTS + seg)
    offs_m = tl.arange(0, M_PAD)
    cols = tl.arange(0, D)
    q = tl.load(Q + (seg * M + offs_m[:, None]) * D + cols[None, :], mask=offs_m[:, None] < M, other=0.0)
    m_i = tl.full([M_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([M_PAD], tl.float32)
    acc = tl.zeros([M_PAD, D], tl.float32)
    lo = split * chunk
    hi = tl.minimum(lo + chunk, n)
    for b0 in range(lo, hi, BLOCK_N):
        local = b0 + tl.arange(0, BLOCK_N)
        mask = local < hi
        rows = start + local
        k = load_rows(K, KS, KZ, rows, local, g0, mask, D, K_BITS, K_GROUP, K_CHANNEL, K_SYM)
        s = tl.dot(q, tl.trans(k.to(q.dtype))) * qk_scale
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
        v = load_rows(V, VS, VZ, rows, local, g0, mask, D, V_BITS, V_GROUP, V_CHANNEL, V_SYM)
        acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v.to(q.dtype))
        m_i = m_new
    has = l_i > 0.0
    out = acc / tl.where(has, l_i, 1.0)[:, None]
    lse = tl.where(has, m_i + tl.log2(tl.where(has, l_i, 1.0)), float("-inf"))
    slot = seg * splits_total + split_offset + split
    tl.store(O_PART + (slot * M_PAD + offs_m[:, None]) * D + cols[None, :], out, mask=offs_m[:, None] < M)
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
    num_stages: int = 2,
    target_programs: int | None = None,
) -> torch.Tensor:
    """Attention of ``q [S, M, D]`` over each segment's packed (or dense) rows plus its dense tail.

    ``M`` rows of a segment are its query group (query heads of one KV head) times
    ``query_tokens`` new tokens, ordered ``g * query_tokens + t``; the new tokens are the
    last ``query_tokens`` rows of the tail and attend causally among themselves.
    Returns ``[S, M, D]`` in ``q.dtype``.
    """
    S, M, D = q.shape
    q = q.contiguous()
    m_pad = max(16, next_pow2(M))
    scale = D**-0.5 if scale is None else scale
    target = target_programs or 4 * torch.cuda.get_device_properties(q.device).multi_processor_count
    n_main, chunk = _splits(S, segments.max_length, block_n, target)
    n_tail, tail_chunk = (0, 0)
    if tail is not None:
        n_tail, tail_chunk = _splits(S, tail.max_length, block_n, max(S, target // 8))
    total = n_main + n_tail
    o_part = torch.empty(S * total * m_pad * D, dtype=torch.float32, device=q.device)
    l_part = torch.empty(S * total * m_pad, dtype=torch.float32, device=q.device)
    common = dict(M=M, M_PAD=m_pad, QM=query_tokens, D=D, BLOCK_N=block_n, num_warps=num_warps, num_stages=num_stages)
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
