"""The decode slice kernel, transposed: packed rows are the *left* operand of every matrix product.

Same arithmetic as ``triton_decode._split_kernel`` (scales factored out, codes read as
exact fp16), computed as ``scores^T = K q^T`` and ``out^T = V^T p^T``. Why: the
operand built in registers from unpacked codes is then the left-hand one, which the
compiler can feed to the tensor cores from registers; as the right-hand operand it is
first written to shared memory and read back, every tile - what profiling showed the
first kernel waiting on. The query group and the probabilities, small and reused,
take the right-hand side instead.
"""

from __future__ import annotations

import triton
import triton.language as tl

from kvstack.kernels.triton_decode import _codes, _phase


@triton.jit
def _load_phases_t(Q, base, offs_m, M: tl.constexpr, D: tl.constexpr, P: tl.constexpr):
    """Query rows split by channel phase and transposed: ``qt_i[j, m] = q[m, P*j + i]`` (float32)."""
    jj = tl.arange(0, D // P)
    mask = offs_m[None, :] < M
    ptr = Q + (base + offs_m[None, :]) * D + P * jj[:, None]
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
def _scores_t(
    q0, q1, q2, q3, K, KS, KZ, rows, mask, srow,
    D: tl.constexpr, BITS: tl.constexpr, GROUP: tl.constexpr, CHANNEL: tl.constexpr, SYM: tl.constexpr,
):
    """``scores^T [N, M]`` of a tile of packed keys (see ``triton_decode._packed_scores``)."""
    P: tl.constexpr = 8 // BITS
    DP: tl.constexpr = D // P
    HALF: tl.constexpr = 1 << (BITS - 1)
    jj = tl.arange(0, DP)
    b = tl.load(K + rows[:, None] * DP + jj[None, :], mask=mask[:, None], other=0).to(tl.int32)
    s = tl.zeros([rows.shape[0], q0.shape[1]], tl.float32)
    if CHANNEL:
        bias = tl.zeros([q0.shape[1]], tl.float32)
        for i in tl.static_range(P):
            qt = _phase(q0, q1, q2, q3, i)
            sc = tl.load(KS + srow * D + P * jj + i).to(tl.float32)
            s += tl.dot(_codes(b, i, BITS), (qt * sc[:, None]).to(tl.float16))
            if SYM:
                bias -= HALF * tl.sum(qt * sc[:, None], 0)
            else:
                bias += tl.sum(qt * tl.load(KZ + srow * D + P * jj + i).to(tl.float32)[:, None], 0)
        s += bias[None, :]
    else:
        G: tl.constexpr = D // GROUP
        for i in tl.static_range(P):
            c = _codes(b, i, BITS)
            qt = _phase(q0, q1, q2, q3, i)
            for g in tl.static_range(G):
                sg = tl.load(KS + rows * G + g, mask=mask, other=0.0).to(tl.float32)
                qg = tl.where(((P * jj + i) // GROUP == g)[:, None], qt, 0.0)
                s += tl.dot(c, qg.to(tl.float16)) * sg[:, None]
                qsum = tl.sum(qg, 0)
                if SYM:
                    s -= HALF * sg[:, None] * qsum[None, :]
                else:
                    zg = tl.load(KZ + rows * G + g, mask=mask, other=0.0).to(tl.float32)
                    s += zg[:, None] * qsum[None, :]
    return s


@triton.jit
def _values_t(
    pt, bv, VS, VZ, rows, mask, srow, i: tl.constexpr,
    D: tl.constexpr, BITS: tl.constexpr, GROUP: tl.constexpr, CHANNEL: tl.constexpr, SYM: tl.constexpr,
):
    """``out^T [D/P, M]`` of channel phase ``i`` from the transposed byte tile ``bv [D/P, N]``."""
    P: tl.constexpr = 8 // BITS
    DP: tl.constexpr = D // P
    HALF: tl.constexpr = 1 << (BITS - 1)
    jj = tl.arange(0, DP)
    c = _codes(bv, i, BITS)
    if CHANNEL:
        psum = tl.sum(pt, 0)
        sc = tl.load(VS + srow * D + P * jj + i).to(tl.float32)
        out = tl.dot(c, pt.to(tl.float16)) * sc[:, None]
        if SYM:
            out -= HALF * sc[:, None] * psum[None, :]
        else:
            out += tl.load(VZ + srow * D + P * jj + i).to(tl.float32)[:, None] * psum[None, :]
    else:
        G: tl.constexpr = D // GROUP
        out = tl.zeros([DP, pt.shape[1]], tl.float32)
        for g in tl.static_range(G):
            sg = tl.load(VS + rows * G + g, mask=mask, other=0.0).to(tl.float32)
            ps = pt * sg[:, None]
            part = tl.dot(c, ps.to(tl.float16))
            if SYM:
                part -= HALF * tl.sum(ps, 0)[None, :]
            else:
                zg = tl.load(VZ + rows * G + g, mask=mask, other=0.0).to(tl.float32)
                part += tl.sum(pt * zg[:, None], 0)[None, :]
            out += tl.where(((P * jj + i) // GROUP == g)[:, None], part, 0.0)
    return out


@triton.jit
def split_kernel_t(
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
    q0, q1, q2, q3 = _load_phases_t(Q, seg * M, offs_m, M, D, PK)
    m_i = tl.full([M_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([M_PAD], tl.float32)
    acc0 = tl.zeros([DV, M_PAD], tl.float32)
    acc1 = tl.zeros([DV, M_PAD], tl.float32)
    acc2 = tl.zeros([DV, M_PAD], tl.float32)
    acc3 = tl.zeros([DV, M_PAD], tl.float32)
    lo = split * chunk
    hi = tl.minimum(lo + chunk, n)
    cols = tl.arange(0, D)
    jv = tl.arange(0, DV)
    for b0 in range(lo, hi, BLOCK_N):
        local = b0 + tl.arange(0, BLOCK_N)
        mask = local < hi
        rows = start + local
        if K_BITS == 16:
            k = tl.load(K + rows[:, None] * D + cols[None, :], mask=mask[:, None], other=0.0)
            if IEEE:  # float32 rows: exact products, not TF32
                s = tl.dot(k.to(tl.float32), q0, input_precision="ieee")
            else:
                s = tl.dot(k, q0.to(k.dtype))
        else:
            s = _scores_t(q0, q1, q2, q3, K, KS, KZ, rows, mask, g0 + b0 // K_GROUP,
                          D, K_BITS, K_GROUP, K_CHANNEL, K_SYM)
        s = s * qk_scale
        valid = mask[:, None]
        if CAUSAL_TAIL:
            # query token t (column r = g * QM + t) is the (QM - t)-th last row of the tail
            valid = valid & (local[:, None] <= (n - QM + offs_m % QM)[None, :])
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_safe[None, :])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 0)
        m_i = m_new
        if V_BITS == 16:
            vt = tl.load(V + rows[None, :] * D + cols[:, None], mask=mask[None, :], other=0.0)
            if IEEE:
                acc0 = acc0 * alpha[None, :] + tl.dot(vt.to(tl.float32), p, input_precision="ieee")
            else:
                acc0 = acc0 * alpha[None, :] + tl.dot(vt, p.to(vt.dtype))
        else:
            bv = tl.load(V + rows[None, :] * DV + jv[:, None], mask=mask[None, :], other=0).to(tl.int32)
            vrow = g0 + b0 // V_GROUP
            acc0 = acc0 * alpha[None, :] + _values_t(
                p, bv, VS, VZ, rows, mask, vrow, 0, D, V_BITS, V_GROUP, V_CHANNEL, V_SYM)
            if PV > 1:
                acc1 = acc1 * alpha[None, :] + _values_t(
                    p, bv, VS, VZ, rows, mask, vrow, 1, D, V_BITS, V_GROUP, V_CHANNEL, V_SYM)
            if PV > 2:
                acc2 = acc2 * alpha[None, :] + _values_t(
                    p, bv, VS, VZ, rows, mask, vrow, 2, D, V_BITS, V_GROUP, V_CHANNEL, V_SYM)
                acc3 = acc3 * alpha[None, :] + _values_t(
                    p, bv, VS, VZ, rows, mask, vrow, 3, D, V_BITS, V_GROUP, V_CHANNEL, V_SYM)
    has = l_i > 0.0
    inv = 1.0 / tl.where(has, l_i, 1.0)
    lse = tl.where(has, m_i + tl.log2(tl.where(has, l_i, 1.0)), float("-inf"))
    slot = seg * splits_total + split_offset + split
    optr = O_PART + (slot * M_PAD + offs_m[None, :]) * D + PV * jv[:, None]
    omask = offs_m[None, :] < M
    tl.store(optr, acc0 * inv[None, :], mask=omask)
    if PV > 1:
        tl.store(optr + 1, acc1 * inv[None, :], mask=omask)
    if PV > 2:
        tl.store(optr + 2, acc2 * inv[None, :], mask=omask)
        tl.store(optr + 3, acc3 * inv[None, :], mask=omask)
    tl.store(L_PART + slot * M_PAD + offs_m, lse)

