"""Attention each key receives from a few queries (SnapKV / Q2C / H2O scores), never as a T x T matrix.

Two passes over the keys, each program holding one tile of logits at a time: the first
finds every query's log-sum-exp over the keys it may see (causal by true position, an
optional sliding window, padding excluded); the second walks the queries for a tile of
keys and adds up ``exp(logit - lse)``, the softmax weight each key got. Same result as
:func:`kvstack.stages.select.scores.attention_received` (its reference), per query head.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from kvstack.kernels.triton_rows import next_pow2

LOG2E = 1.4426950408889634


@triton.jit
def _allowed(kpos, kvalid, qpos, WINDOW: tl.constexpr):
    ok = (kvalid[None, :] != 0) & (kpos[None, :] <= qpos[:, None])
    if WINDOW > 0:
        ok = ok & ((qpos[:, None] - kpos[None, :]) < WINDOW)
    return ok


@triton.jit
def _key_tile(K, KPOS, KVALID, h, s, L, D: tl.constexpr):
    """Keys ``s`` of head ``h`` with their positions and validity (zeros past the end)."""
    smask = s < L
    k = tl.load(K + (h * L + s[:, None]) * D + tl.arange(0, D)[None, :], mask=smask[:, None], other=0.0)
    kpos = tl.load(KPOS + h * L + s, mask=smask, other=0)
    kvalid = tl.load(KVALID + h * L + s, mask=smask, other=0)
    return k, kpos, kvalid


@triton.jit
def _logits(q, k, IEEE: tl.constexpr):
    if IEEE:
        x = tl.dot(q, tl.trans(k), input_precision="ieee")
    else:
        x = tl.dot(q, tl.trans(k))
    return x


@triton.jit
def _lse_kernel(
    Q, K, KPOS, KVALID, QPOS, LSE, qk_scale, L, n,
    G: tl.constexpr, D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, WINDOW: tl.constexpr,
    IEEE: tl.constexpr,
):
    h = tl.program_id(0)
    g = tl.program_id(1)
    t = tl.program_id(2) * BM + tl.arange(0, BM)
    tmask = t < n
    cols = tl.arange(0, D)
    q = tl.load(Q + ((h * G + g) * n + t[:, None]) * D + cols[None, :], mask=tmask[:, None], other=0.0)
    qpos = tl.load(QPOS + t, mask=tmask, other=-1)
    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    for s0 in range(0, L, BN):
        s = s0 + tl.arange(0, BN)
        k, kpos, kvalid = _key_tile(K, KPOS, KVALID, h, s, L, D)
        x = _logits(q, k, IEEE) * qk_scale
        x = tl.where(_allowed(kpos, kvalid, qpos, WINDOW), x, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(x, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        l_i = l_i * tl.exp2(m_i - m_safe) + tl.sum(tl.exp2(x - m_safe[:, None]), 1)
        m_i = m_new
    lse = tl.where(l_i > 0.0, m_i + tl.log2(tl.where(l_i > 0.0, l_i, 1.0)), float("inf"))
    tl.store(LSE + (h * G + g) * n + t, lse, mask=tmask)


@triton.jit
def _received_kernel(
    Q, K, KPOS, KVALID, QPOS, LSE, OUT, qk_scale, L, n,
    G: tl.constexpr, D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, WINDOW: tl.constexpr,
    IEEE: tl.constexpr,
):
    h = tl.program_id(0)
    g = tl.program_id(1)
    s = tl.program_id(2) * BN + tl.arange(0, BN)
    smask = s < L
    cols = tl.arange(0, D)
    k, kpos, kvalid = _key_tile(K, KPOS, KVALID, h, s, L, D)
    acc = tl.zeros([BN], tl.float32)
    for t0 in range(0, n, BM):
        t = t0 + tl.arange(0, BM)
        tmask = t < n
        q = tl.load(Q + ((h * G + g) * n + t[:, None]) * D + cols[None, :], mask=tmask[:, None], other=0.0)
        qpos = tl.load(QPOS + t, mask=tmask, other=-1)
        lse = tl.load(LSE + (h * G + g) * n + t, mask=tmask, other=float("inf"))
        x = _logits(q, k, IEEE) * qk_scale
        ok = _allowed(kpos, kvalid, qpos, WINDOW) & tmask[:, None]
        acc += tl.sum(tl.where(ok, tl.exp2(x - lse[:, None]), 0.0), 0)
    tl.store(OUT + (h * G + g) * L + s, acc, mask=smask)


def attention_received(
    queries: torch.Tensor, query_pos: torch.Tensor, keys: torch.Tensor, key_pos: torch.Tensor,
    valid: torch.Tensor, scaling: float, window: int | None = None, block_m: int = 32, block_n: int = 64,
) -> torch.Tensor:
    """``[Hq, L]`` attention each key row received from ``queries [Hq, n, D]`` (post-RoPE).

    ``keys [Hkv, L, D]`` with their positions ``key_pos [Hkv, L]`` and ``valid [Hkv, L]``
    (False: padding of a shorter head); query ``i`` sits at ``query_pos[i]``.
    """
    hq, n, d = queries.shape
    hk, length, _ = keys.shape
    g = hq // hk
    q = queries.contiguous()
    k = keys.to(q.dtype).contiguous()
    kpos = key_pos.to(device=q.device, dtype=torch.int32).contiguous()
    kvalid = valid.to(device=q.device, dtype=torch.int8).contiguous()
    qpos = query_pos.to(device=q.device, dtype=torch.int32).contiguous()
    lse = torch.empty(hq * n, dtype=torch.float32, device=q.device)
    out = torch.empty(hq, length, dtype=torch.float32, device=q.device)
    bm = max(16, min(block_m, next_pow2(n)))
    # float32 inputs get exact float32 products (not TF32): scores decide rankings
    common = dict(G=g, D=d, BM=bm, BN=block_n, WINDOW=window or 0, IEEE=q.dtype == torch.float32)
    _lse_kernel[(hk, g, math.ceil(n / bm))](q, k, kpos, kvalid, qpos, lse, scaling * LOG2E, length, n, **common)
    _received_kernel[(hk, g, math.ceil(length / block_n))](
        q, k, kpos, kvalid, qpos, lse, out, scaling * LOG2E, length, n, **common
    )
    return out

