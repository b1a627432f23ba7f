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

import functools
import math
import os

import torch
import triton
import triton.language as tl

from kvstack.errors import InputError
from kvstack.kernels.layout import PackedRows, Segments
from kvstack.kernels.triton_rows import next_pow2
from kvstack.kernels.unpack_asm import UNPACK_ASM_2, UNPACK_ASM_4, UNPACK_ASM_8

try:  # Gluon (triton.experimental.gluon) arrived with Triton 3.4; older Triton keeps the Triton kernel only
    from kvstack.kernels import gluon_decode
except ImportError:  # pragma: no cover - depends on the installed Triton
    gluon_decode = None

LOG2E = 1.4426950408889634
GLUON_TAIL_MIN_ROWS = 16384  # rows per head from which the Gluon kernel is used alongside a dense tail

@triton.jit
def _codes(b, i: tl.constexpr, BITS: tl.constexpr):
    """Phase ``i`` codes of an int32 byte tile as exact float16, without an int-to-float instruction.

    ``0x6400 | c`` read as float16 is ``1024 + c`` (exponent 10, so the mantissa counts
    units); subtracting 1024 is exact. This replaces the slow I2F conversion, the
    instruction that bounds a naive unpacking kernel. (The portable path: the
    interpreter runs it; CUDA takes :func:`_swar_codes`.)
    """
    c = (b >> (BITS * i)) & ((1 << BITS) - 1)
    return (c | 0x6400).to(tl.int16).to(tl.float16, bitcast=True) - 1024.0


@triton.jit
def _swar_codes(b, BITS: tl.constexpr):
    """Every phase of a uint8 byte tile at once, exact float16 codes two at a time (CUDA only).

    Four bytes share one register; a ``prmt`` spreads bytes 0, 1 (2, 3) into the two halves,
    a ``lop3`` per phase keeps that phase's bits and ORs ``0x6400`` into both halves (two float16
    ``1024 + 2**(BITS*i) * code``), and one ``sub``/``fma.f16x2`` takes the offset and the power
    of two out exactly: about 1.25 instructions per code at 4 bits where the portable path spends
    four or five. Output element ``k`` depends on input byte ``k`` only, as an elementwise op
    must: the compiler lays the tile out along either axis (for values it picks the tensor-core
    operand layout, four tokens per register).
    """
    if BITS == 8:
        c0 = tl.inline_asm_elementwise(
            UNPACK_ASM_8,
            "=r,=r,r", [b], dtype=tl.float16, is_pure=True, pack=4)
        c1 = c0
        c2 = c0
        c3 = c0
    elif BITS == 4:
        c0, c1 = tl.inline_asm_elementwise(
            UNPACK_ASM_4,
            "=r,=r,=r,=r,r", [b], dtype=(tl.float16, tl.float16), is_pure=True, pack=4)
        c2 = c0
        c3 = c0
    else:
        c0, c1, c2, c3 = tl.inline_asm_elementwise(
            UNPACK_ASM_2,
            "=r,=r,=r,=r,=r,=r,=r,=r,r", [b], dtype=(tl.float16, tl.float16, tl.float16, tl.float16),
            is_pure=True, pack=4)
    return c0, c1, c2, c3


@triton.jit
def _unpack(b, BITS: tl.constexpr, SWAR: tl.constexpr):
    """The four phase tiles of a byte tile (unused phases repeat phase 0)."""
    if SWAR:
        c0, c1, c2, c3 = _swar_codes(b, BITS)
    else:
        w = b.to(tl.int32)
        c0 = _codes(w, 0, BITS)
        c1 = c0
        c2 = c0
        c3 = c0
        if BITS < 8:
            c1 = _codes(w, 1, BITS)
        if BITS < 4:
            c2 = _codes(w, 2, BITS)
            c3 = _codes(w, 3, BITS)
    return c0, c1, c2, c3


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
    ch = P * tl.arange(0, D // P)
    mask = offs_m[:, None] < M
    ptr = Q + (base + offs_m[:, None]) * D + ch[None, :]
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
    SWAR: tl.constexpr,
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
    ch = P * jj
    b = tl.load(K + rows[:, None] * DP + jj[None, :], mask=mask[:, None], other=0)
    c0, c1, c2, c3 = _unpack(b, BITS, SWAR)
    HALF: tl.constexpr = 1 << (BITS - 1)
    s = tl.zeros([q0.shape[0], rows.shape[0]], tl.float32)
    if CHANNEL:
        bias = tl.zeros([q0.shape[0]], tl.float32)
        for i in tl.static_range(P):
            qi = _phase(q0, q1, q2, q3, i)
            sc = tl.load(KS + srow * D + ch + i).to(tl.float32)
            s += tl.dot((qi * sc[None, :]).to(tl.float16), tl.trans(_phase(c0, c1, c2, c3, i)))
            if SYM:
                bias -= HALF * tl.sum(qi * sc[None, :], 1)
            else:
                bias += tl.sum(qi * tl.load(KZ + srow * D + ch + i).to(tl.float32)[None, :], 1)
        s += bias[:, None]
    else:
        G: tl.constexpr = D // GROUP
        for i in tl.static_range(P):
            c = tl.trans(_phase(c0, c1, c2, c3, i))
            qi = _phase(q0, q1, q2, q3, i)
            for g in tl.static_range(G):
                sg = tl.load(KS + rows * G + g, mask=mask, other=0.0).to(tl.float32)
                qg = tl.where(((ch + i) // GROUP == g)[None, :], qi, 0.0)
                s += tl.dot(qg.to(tl.float16), c) * sg[None, :]
                qsum = tl.sum(qg, 1)
                if SYM:
                    s -= HALF * qsum[:, None] * sg[None, :]
                else:
                    zg = tl.load(KZ + rows * G + g, mask=mask, other=0.0).to(tl.float32)
                    s += qsum[:, None] * zg[None, :]
    return s


@triton.jit
def _phase_values(
    p, psum, c, VS, VZ, rows, mask, srow, ch, i: tl.constexpr,
    D: tl.constexpr, BITS: tl.constexpr, GROUP: tl.constexpr, CHANNEL: tl.constexpr, SYM: tl.constexpr,
):
    """``p @ v`` for channel phase ``i`` (codes ``c``) of a tile of packed values, scales factored out."""
    HALF: tl.constexpr = 1 << (BITS - 1)
    G: tl.constexpr = D // GROUP
    if CHANNEL:
        sc = tl.load(VS + srow * D + ch + i).to(tl.float32)
        out = tl.dot(p.to(tl.float16), c) * sc[None, :]
        if SYM:
            out -= HALF * psum[:, None] * sc[None, :]
        else:
            out += psum[:, None] * tl.load(VZ + srow * D + ch + i).to(tl.float32)[None, :]
    else:
        out = tl.zeros([p.shape[0], c.shape[1]], tl.float32)
        for g in tl.static_range(G):
            sg = tl.load(VS + rows * G + g, mask=mask, other=0.0).to(tl.float32)
            ps = p * sg[None, :]
            part = tl.dot(ps.to(tl.float16), c)
            if SYM:
                part -= HALF * tl.sum(ps, 1)[:, None]
            else:
                zg = tl.load(VZ + rows * G + g, mask=mask, other=0.0).to(tl.float32)
                part += tl.sum(p * zg[None, :], 1)[:, None]
            if G == 1:
                out = part
            else:
                out += tl.where(((ch + i) // GROUP == g)[None, :], part, 0.0)
    return out


@triton.jit
def _packed_values(
    p, V, VS, VZ, rows, mask, srow,
    D: tl.constexpr, BITS: tl.constexpr, GROUP: tl.constexpr, CHANNEL: tl.constexpr, SYM: tl.constexpr,
    SWAR: tl.constexpr,
):
    """``p @ v`` for every channel phase of a tile of packed values (unused phases repeat phase 0)."""
    P: tl.constexpr = 8 // BITS
    DP: tl.constexpr = D // P
    jj = tl.arange(0, DP)
    ch = P * jj
    b = tl.load(V + rows[:, None] * DP + jj[None, :], mask=mask[:, None], other=0)
    c0, c1, c2, c3 = _unpack(b, BITS, SWAR)
    psum = tl.sum(p, 1)
    o0 = _phase_values(p, psum, c0, VS, VZ, rows, mask, srow, ch, 0, D, BITS, GROUP, CHANNEL, SYM)
    o1 = o0
    o2 = o0
    o3 = o0
    if P > 1:
        o1 = _phase_values(p, psum, c1, VS, VZ, rows, mask, srow, ch, 1, D, BITS, GROUP, CHANNEL, SYM)
    if P > 2:
        o2 = _phase_values(p, psum, c2, VS, VZ, rows, mask, srow, ch, 2, D, BITS, GROUP, CHANNEL, SYM)
        o3 = _phase_values(p, psum, c3, VS, VZ, rows, mask, srow, ch, 3, D, BITS, GROUP, CHANNEL, SYM)
    return o0, o1, o2, o3


@triton.jit
def _attend_rows(
    Q, K, KS, KZ, V, VS, VZ, O_PART, L_PART, seg, slot,
    start, k_off, v_off, k_stride, v_stride, n, g0, lo, hi, qk_scale,
    M: tl.constexpr, M_PAD: tl.constexpr, QM: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr,
    K_BITS: tl.constexpr, K_GROUP: tl.constexpr, K_CHANNEL: tl.constexpr, K_SYM: tl.constexpr,
    V_BITS: tl.constexpr, V_GROUP: tl.constexpr, V_CHANNEL: tl.constexpr, V_SYM: tl.constexpr,
    CAUSAL: tl.constexpr, IEEE: tl.constexpr, SWAR: tl.constexpr,
):
    """Online softmax of segment ``seg``'s query group over its rows ``[lo, hi)`` (of ``n``); partials to ``slot``.

    Packed rows are addressed by row index (``start + local``: codes and scales have fixed
    widths); dense rows by element offset (``k_off + local * k_stride``), so a tail can be
    any strided ``[S, t, D]`` view.
    """
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
    cols = tl.arange(0, D)
    for b0 in range(lo, hi, BLOCK_N):
        local = b0 + tl.arange(0, BLOCK_N)
        mask = local < hi
        rows = start + local
        if K_BITS == 16:
            k = tl.load(K + k_off + local[:, None] * k_stride + cols[None, :], mask=mask[:, None], other=0.0)
            if IEEE:  # float32 rows: exact products, not TF32
                s = tl.dot(q0, tl.trans(k.to(tl.float32)), input_precision="ieee")
            else:
                s = tl.dot(q0.to(k.dtype), tl.trans(k))
        else:
            s = _packed_scores(q0, q1, q2, q3, K, KS, KZ, rows, mask, g0 + b0 // K_GROUP,
                               D, K_BITS, K_GROUP, K_CHANNEL, K_SYM, SWAR)
        s = s * qk_scale
        valid = mask[None, :]
        if CAUSAL:
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
            v = tl.load(V + v_off + local[:, None] * v_stride + cols[None, :], mask=mask[:, None], other=0.0)
            if IEEE:
                acc0 = acc0 * alpha[:, None] + tl.dot(p, v.to(tl.float32), input_precision="ieee")
            else:
                acc0 = acc0 * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        else:
            o0, o1, o2, o3 = _packed_values(p, V, VS, VZ, rows, mask, g0 + b0 // V_GROUP,
                                            D, V_BITS, V_GROUP, V_CHANNEL, V_SYM, SWAR)
            acc0 = acc0 * alpha[:, None] + o0
            if PV > 1:
                acc1 = acc1 * alpha[:, None] + o1
            if PV > 2:
                acc2 = acc2 * alpha[:, None] + o2
                acc3 = acc3 * alpha[:, None] + o3
    has = l_i > 0.0
    inv = 1.0 / tl.where(has, l_i, 1.0)
    lse = tl.where(has, m_i + tl.log2(tl.where(has, l_i, 1.0)), float("-inf"))
    optr = O_PART + (slot * M_PAD + offs_m[:, None]) * D + PV * tl.arange(0, DV)[None, :]
    omask = offs_m[:, None] < M
    tl.store(optr, acc0 * inv[:, None], mask=omask)
    if PV > 1:
        tl.store(optr + 1, acc1 * inv[:, None], mask=omask)
    if PV > 2:
        tl.store(optr + 2, acc2 * inv[:, None], mask=omask)
        tl.store(optr + 3, acc3 * inv[:, None], mask=omask)
    tl.store(L_PART + slot * M_PAD + offs_m, lse)


@triton.jit(do_not_specialize=["tail_len", "tail_chunk", "n_main", "splits_total", "split_offset", "l_off"])
def _split_kernel(
    Q, K, KS, KZ, V, VS, VZ, STARTS, LENS, GSTARTS,
    TK, TV, TSTARTS, TLENS, tail_len, tk_seg, tk_row, tv_seg, tv_row,
    WORK, l_off, qk_scale, chunk, tail_chunk, n_main, splits_total, split_offset,
    M: tl.constexpr, M_PAD: tl.constexpr, QM: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr,
    K_BITS: tl.constexpr, K_GROUP: tl.constexpr, K_CHANNEL: tl.constexpr, K_SYM: tl.constexpr,
    V_BITS: tl.constexpr, V_GROUP: tl.constexpr, V_CHANNEL: tl.constexpr, V_SYM: tl.constexpr,
    HAS_TAIL: tl.constexpr, TAIL_TABLE: tl.constexpr, IEEE: tl.constexpr, SWAR: tl.constexpr,
):
    """Slices ``0 .. n_main`` read the (packed) rows; the slices after them read the dense tail.

    One launch for both, so a decode step costs this kernel and the merge. The tail is
    either a table (``TAIL_TABLE``: rows ``TSTARTS[s] ..`` of a ``[rows, D]`` tensor) or
    ``tail_len`` rows of every segment at element strides ``tk_seg``/``tk_row``.
    """
    seg = tl.program_id(0)
    split = tl.program_id(1) + split_offset
    slot = seg * splits_total + split
    O_PART = WORK
    L_PART = WORK + l_off  # one workspace: partial outputs, then their log-sum-exps
    if split < n_main:
        start = tl.load(STARTS + seg).to(tl.int64)  # rows x row width passes 2**31 at large batches
        n = tl.load(LENS + seg)
        lo = split * chunk
        _attend_rows(Q, K, KS, KZ, V, VS, VZ, O_PART, L_PART, seg, slot, start, start * D, start * D, D, D,
                     n, tl.load(GSTARTS + seg), lo, tl.minimum(lo + chunk, n), qk_scale,
                     M, M_PAD, QM, D, BLOCK_N, K_BITS, K_GROUP, K_CHANNEL, K_SYM, V_BITS, V_GROUP, V_CHANNEL, V_SYM,
                     False, IEEE, SWAR)
    elif HAS_TAIL:
        if TAIL_TABLE:
            ts = tl.load(TSTARTS + seg).to(tl.int64)
            tn = tl.load(TLENS + seg)
            k_off = ts * D
            v_off = ts * D
            k_row = D
            v_row = D
        else:
            tn = tail_len
            k_off = seg * tk_seg
            v_off = seg * tv_seg
            k_row = tk_row
            v_row = tv_row
        lo = (split - n_main) * tail_chunk
        _attend_rows(Q, TK, TK, TK, TV, TV, TV, O_PART, L_PART, seg, slot, 0, k_off, v_off, k_row, v_row,
                     tn, 0, lo, tl.minimum(lo + tail_chunk, tn), qk_scale,
                     M, M_PAD, QM, D, BLOCK_N, 16, 1, False, True, 16, 1, False, True, QM > 1, IEEE, False)


@triton.jit(do_not_specialize=["splits_total", "l_off"])
def _combine_kernel(WORK, l_off, OUT, splits_total, M: tl.constexpr, M_PAD: tl.constexpr, D: tl.constexpr,
                    SLOTS: tl.constexpr, CHUNK: tl.constexpr):
    """Merge one query row's slices by their log-sum-exp: the weights in one load, outputs ``CHUNK`` slices a step.

    One program per (segment, row). (A program per segment walking the slices one by one took
    ~1.5 us a slice - longer than the attention itself at batch 1, where there are ~200 slices.)
    """
    seg = tl.program_id(0)
    m = tl.program_id(1)
    O_PART = WORK
    L_PART = WORK + l_off
    base = seg * splits_total
    offs = tl.arange(0, SLOTS)
    top = tl.full([SLOTS], float("-inf"), tl.float32)
    for s0 in range(0, splits_total, SLOTS):  # one step unless there are more than SLOTS slices
        top = tl.maximum(top, tl.load(L_PART + (base + s0 + offs) * M_PAD + m, mask=s0 + offs < splits_total,
                                      other=float("-inf")))
    big = tl.max(top, 0)
    big = tl.where(big == float("-inf"), 0.0, big)
    cols = tl.arange(0, D)
    part = tl.arange(0, CHUNK)
    denom = tl.zeros([CHUNK], tl.float32)
    acc = tl.zeros([CHUNK, D], tl.float32)
    for s0 in range(0, splits_total, CHUNK):
        live = s0 + part < splits_total
        w = tl.exp2(tl.load(L_PART + (base + s0 + part) * M_PAD + m, mask=live, other=float("-inf")) - big)
        o = tl.load(O_PART + ((base + s0 + part[:, None]) * M_PAD + m) * D + cols[None, :], mask=live[:, None],
                    other=0.0)
        denom += w
        acc += w[:, None] * o
    total = tl.sum(denom, 0)
    out = tl.sum(acc, 0) / tl.where(total > 0.0, total, 1.0)
    tl.store(OUT + (seg * M + m) * D + cols, out)


def _rows_args(x: PackedRows | torch.Tensor) -> tuple:
    """(rows, scales, zeros) pointers and (bits, group, channel, sym) constants; dense rows are 16-bit."""
    if isinstance(x, torch.Tensor):
        return (x, x, x), (16, 1, False, True)
    z = x.zeros if x.zeros is not None else x.scales
    return (x.codes, x.scales, z), (x.bits, x.group, x.axis == "channel", x.zeros is None)


def _swar(asked: bool | None, keys, values) -> bool:
    """SWAR unpacking wherever both sides allow it (``asked=None``) or as asked; impossible asks are errors.

    ``KVSTACK_SWAR=0`` in the environment turns the default off (the portable unpacking everywhere).
    """
    ok = swar_ok(keys) and swar_ok(values) and os.environ.get("KVSTACK_SWAR") != "0"
    if asked and not ok:
        raise InputError("swar=True needs codes on a CUDA device (the interpreter cannot run inline assembly)")
    return ok if asked is None else asked


def _gluon(asked: bool | None, keys, values) -> bool:
    """The Gluon kernel for the packed rows where it supports them (``asked=None``) or as asked.

    ``KVSTACK_GLUON=0`` turns the default off. It needs the query group to fit 16 rows, checked per call.
    """
    ok = (gluon_decode is not None and gluon_decode.supported(keys, values, gluon_decode.ROWS)
          and os.environ.get("KVSTACK_GLUON") != "0")
    if asked and not ok:
        raise InputError("gluon=True needs Triton's Gluon and packed per-token keys and values on CUDA with one scale "
                         "group per row (group = head_dim): 4 bits at head_dim 128, or 8 bits at 64/128; 16-byte "
                         "aligned codes")
    return ok if asked is None else asked


def swar_ok(rows: PackedRows | torch.Tensor) -> bool:
    """Whether these rows may be unpacked by :func:`_swar_codes`: compiled CUDA code only.

    The CPU interpreter cannot run inline assembly; dense rows have nothing to unpack.
    """
    return not isinstance(rows, PackedRows) or rows.codes.is_cuda


@functools.lru_cache(maxsize=1024)
def _splits(segments: int, max_len: int, block_n: int, target_programs: int, whole: bool = False) -> tuple[int, int]:
    """(number of slices, rows per slice): enough programs to fill the GPU, whole tiles per slice.

    ``whole``: at most ``target_programs`` (one wave of resident programs; a few over would wait for a
    second round while the rest of the GPU idles), else at least that many.
    """
    tiles = max(1, math.ceil(max_len / block_n))
    per = target_programs / max(1, segments)
    splits = max(1, min(tiles, math.floor(per) if whole else math.ceil(per)))
    chunk = math.ceil(tiles / splits) * block_n
    return math.ceil(max(1, max_len) / chunk), chunk


@functools.lru_cache(maxsize=16)
def _default_programs(device: torch.device) -> int:
    """Two programs per multiprocessor on a GPU; a few in the CPU interpreter (each runs one at a time)."""
    if device.type != "cuda":
        return 8
    return 2 * torch.cuda.get_device_properties(device).multi_processor_count


class DecodePlan:
    """A decode launch prepared once for fixed packed rows: only queries and the tail change per call.

    Everything that depends on the stored rows - kernel pointers and constants, how the
    rows are sliced across programs - is worked out here, so a decode step pays one
    small Python call, one allocation and two launches (slices with the tail, merge),
    and reads nothing back from the device.
    """

    def __init__(
        self, keys: PackedRows | torch.Tensor, values: PackedRows | torch.Tensor, segments: Segments,
        block_n: int = 64, num_warps: int = 4, num_stages: int = 3, target_programs: int | None = None,
        swar: bool | None = None, gluon: bool | None = None, gluon_block: int | None = None,
        gluon_programs: int | None = None, gluon_prefetch: bool | None = None,
    ) -> None:
        device = segments.starts.device
        for rows in (keys, values):  # a tile must sit inside one group of a per-channel scale row
            if isinstance(rows, PackedRows) and rows.axis == "channel":
                block_n = min(block_n, rows.group)
        self.segments = segments
        self.block_n = block_n
        self.target = target_programs or _default_programs(device)
        self.n_main, self.chunk = _splits(segments.count, segments.max_length, block_n, self.target)
        (k, ks, kz), kc = _rows_args(keys)
        (v, vs, vz), vc = _rows_args(values)
        self._rows = (k, ks, kz, v, vs, vz, segments.starts, segments.lengths, segments.group_starts)
        self._consts = dict(
            K_BITS=kc[0], K_GROUP=kc[1], K_CHANNEL=kc[2], K_SYM=kc[3],
            V_BITS=vc[0], V_GROUP=vc[1], V_CHANNEL=vc[2], V_SYM=vc[3],
            BLOCK_N=block_n, num_warps=num_warps, num_stages=num_stages, SWAR=_swar(swar, keys, values),
        )
        self._launch_consts: dict[tuple, dict] = {}
        self.gluon = _gluon(gluon, keys, values)
        if self.gluon:  # one warp per program: more, smaller slices
            sms = _default_programs(device) // 2
            groups = max(keys.dim // keys.group, values.dim // values.group)
            block, per_sm, prefetch, whole = gluon_decode.plan(segments.count, segments.total_rows, sms, keys.bits,
                                                               groups)
            # with a dense tail the Gluon path takes a third launch (the tail's slices go to the Triton kernel);
            # short rows gain less than that launch costs a host-bound step (kvstack.generate at batch 1)
            self.gluon_tail = gluon is True or segments.max_length >= GLUON_TAIL_MIN_ROWS
            self.gluon_block = block if gluon_block is None else gluon_block
            self.gluon_prefetch = prefetch if gluon_prefetch is None else gluon_prefetch
            if gluon_programs is not None or gluon_block is not None:
                per_sm = gluon_programs or gluon_decode.RESIDENT.get((keys.bits, self.gluon_block, groups), 8)
                whole = gluon_programs is None
            self.gluon_splits, self.gluon_chunk = _splits(segments.count, segments.max_length, self.gluon_block,
                                                          max(1, sms * per_sm), whole=whole)
            self._gluon_launch = gluon_decode.Launch(keys, values, segments.starts, segments.lengths,
                                                     self.gluon_block, self.gluon_prefetch)

    def _kwargs(self, M: int, D: int, query_tokens: int, has_tail: bool, table: bool, ieee: bool) -> dict:
        key = (M, D, query_tokens, has_tail, table, ieee)
        kw = self._launch_consts.get(key)
        if kw is None:
            kw = dict(self._consts, M=M, M_PAD=max(16, next_pow2(M)), QM=query_tokens, D=D, HAS_TAIL=has_tail,
                      TAIL_TABLE=table, IEEE=ieee)
            self._launch_consts[key] = kw
        return kw

    def __call__(
        self, q: torch.Tensor, tail_k: torch.Tensor | None = None, tail_v: torch.Tensor | None = None,
        tail: Segments | None = None, scale: float | None = None, query_tokens: int = 1, fuse_tail: bool = True,
    ) -> torch.Tensor:
        """Attention of ``q [S, M, D]`` over the planned rows plus a dense tail; ``[S, M, D]`` in ``q.dtype``.

        The tail is ``tail_k``/``tail_v`` as ``[rows, D]`` with a ``tail`` table, or as
        ``[S, t, D]`` (any strides) with ``tail=None``: ``t`` rows per segment, read in place
        (copied only if its channels are not contiguous). ``fuse_tail=False`` reads the tail in
        a launch of its own (the layout before fusion, kept to compare).
        """
        S, M, D = q.shape
        q = q.contiguous()
        has_tail = tail_k is not None
        table = tail is not None
        if has_tail:  # the kernel steps over rows by stride, over channels by one
            tail_k, tail_v = (t if t.stride(-1) == 1 else t.contiguous() for t in (tail_k, tail_v))
        kw = self._kwargs(M, D, query_tokens, has_tail, table, q.dtype == torch.float32)
        m_pad = kw["M_PAD"]
        fast = (self.gluon and q.dtype in (torch.float16, torch.bfloat16) and M <= gluon_decode.ROWS
                and (not has_tail or self.gluon_tail))
        n_main, chunk = (self.gluon_splits, self.gluon_chunk) if fast else (self.n_main, self.chunk)
        tail_len = tk_seg = tk_row = tv_seg = tv_row = 0
        n_tail = tail_chunk = 0
        if has_tail:
            if table:
                t_max = tail.max_length
            else:
                t_max = tail_len = tail_k.shape[1]
                tk_seg, tk_row = tail_k.stride(0), tail_k.stride(1)
                tv_seg, tv_row = tail_v.stride(0), tail_v.stride(1)
            n_tail, tail_chunk = _splits(S, t_max, self.block_n, max(S, self.target // 8))
        else:
            tail_k = tail_v = q
        tstarts, tlens = (tail.starts, tail.lengths) if table else (self.segments.starts, self.segments.starts)
        total = n_main + n_tail
        l_off = S * total * m_pad * D
        work = torch.empty(l_off + S * total * m_pad, dtype=torch.float32, device=q.device)
        scale = D**-0.5 if scale is None else scale
        args = (q, *self._rows, tail_k, tail_v, tstarts, tlens, tail_len, tk_seg, tk_row, tv_seg, tv_row,
                work, l_off, scale * LOG2E, chunk, tail_chunk, n_main, total)
        if fast:  # packed rows by the Gluon kernel, the tail's slices by this one
            self._gluon_launch(q, work, l_off, scale * LOG2E, chunk, n_main, total)
            if has_tail:
                _split_kernel[(S, n_tail)](*args, n_main, **kw)
        elif fuse_tail or not has_tail:
            _split_kernel[(S, total)](*args, 0, **kw)
        else:
            _split_kernel[(S, n_main)](*args, 0, **self._kwargs(M, D, query_tokens, False, table, kw["IEEE"]))
            _split_kernel[(S, n_tail)](*args, n_main, **kw)
        out = torch.empty(S, M, D, dtype=q.dtype, device=q.device)
        _combine_kernel[(S, M)](work, l_off, out, total, M=M, M_PAD=m_pad, D=D, SLOTS=min(256, next_pow2(total)),
                                CHUNK=min(32, next_pow2(total)), num_warps=4)
        return out


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
    fuse_tail: bool = True,
    swar: bool | None = None,
    gluon: bool | None = None,
) -> torch.Tensor:
    """Attention of ``q [S, M, D]`` over each segment's packed (or dense) rows plus its dense tail.

    ``M`` rows of a segment are its query group (query heads of one KV head) times
    ``query_tokens`` new tokens, ordered ``g * query_tokens + t``; the new tokens are the
    last ``query_tokens`` rows of the tail and attend causally among themselves. The tail
    is ``[rows, D]`` with a ``tail`` table, or ``[S, t, D]`` with ``tail=None`` (see
    :class:`DecodePlan`, which a caller decoding many steps over the same rows should keep).
    Defaults are the configuration measured fastest on an H100 (benchmarks/RESULTS.md); ``swar`` picks the
    unpacking (None: the SWAR inline assembly wherever it can run, see :func:`swar_ok`); ``gluon`` the
    explicit-layout kernel for packed rows (None: wherever :func:`kvstack.kernels.gluon_decode.supported`).
    Returns ``[S, M, D]`` in ``q.dtype``.
    """
    plan = DecodePlan(keys, values, segments, block_n, num_warps, num_stages, target_programs, swar, gluon)
    return plan(q, tail_k, tail_v, tail, scale, query_tokens, fuse_tail)
