"""Decode attention over packed per-token rows with explicit register layouts (Triton's Gluon dialect).

Why a second kernel: the Triton kernel (:mod:`kvstack.kernels.triton_decode`) lets the compiler
choose layouts, and it moves every unpacked tile through shared memory into the tensor-core
operand layout - the wait that kept INT4 decode at ~1.65x of fp16 SDPA. Here the layouts are
written out, so packed codes go from global memory straight into tensor-core operand registers.

- **Transposed products.** Scores are computed as ``K q^T`` and outputs as ``V^T p^T``: tokens
  and channels are the products' 16-row side, the query group (8 heads for GQA 8:1) the 8-column
  side, so no row of a product is padding (``q K^T`` with 8 queries wastes half of every mma).
- **Codes two tokens (or two words) at a time.** Both products reduce along an axis where a
  float16 register pair must hold two neighbours: keys reduce over channels, values over
  tokens. The kernel loads 32-bit words and unpacks *pairs* of words (``OFFSET_PAIR_ASM_*``):
  byte ``i`` of two words becomes one register of two codes. Key words are paired along the row
  (a lane reads 16 contiguous bytes of a row; the query's channels are read in the matching
  order), value words across two tokens (a lane reads 8 contiguous bytes of each of its tokens;
  output channels are permuted to match, undone at the store).
- **The offset cancels in the tensor cores.** Codes enter the products as float16 ``64 + code``
  (INT4) or ``1024 + code`` (INT8); each product's accumulator starts at ``-offset`` times the
  sum of its other operand as rounded to float16, so no instruction per code removes it.
- **Tokens in lane order.** A lane's score rows are renumbered to be contiguous rows of the
  cache, so its scales and zero points are one vector load each.
- **One warp per program**: its own online softmax, no barrier; slices of rows ("split-K",
  flash-decoding) fill the GPU and the Triton merge kernel combines them. Each tile's products
  start afresh and are added in float32: tensor cores truncate when accumulating, and a slice's
  running sum (mostly cancelled later by the zero points) drifted to 1e-2 relative error when
  accumulated in place. :class:`Launch` skips Triton's per-call dispatch after the first call.

Scope (:func:`supported`): per-token groups spanning the whole row for keys and values
(``kt128 v128`` for head_dim 128: one scale and zero per row), 4 bits with head_dim 128 or 8 bits
with head_dim 64/128, up to 16 query rows per KV head, codes 16-byte aligned. Everything else, and
the dense tail, goes to the Triton kernel.
"""

from __future__ import annotations

import functools

import torch
from triton import knobs
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import mma_v2
from triton.runtime.driver import driver

from kvstack.kernels.layout import PackedRows
from kvstack.kernels.unpack_asm import OFFSET_PAIR_ASM_4, OFFSET_PAIR_ASM_8

ROWS = 16  # query rows of one segment: the products' column side (two mma n8 tiles)
# One wave of one-warp programs per multiprocessor, by (bits, tile rows): 65536 registers / (32 lanes x the
# registers Triton 3.6 gives the kernel for sm_90 - INT4 158 / 168 / 250, INT8 166 / 224 / 255 at 32 / 64 / 128
# rows; `python benchmarks/kernel_resources.py --gluon`) - except INT8 at 64 rows, where 9 by registers measured
# 1.36x SDPA and 12 (1.3 waves) 1.60x on an H100 (benchmarks/RESULTS.md). It sets how many slices one launch makes.
RESIDENT = {(4, 32): 12, (4, 64): 12, (4, 128): 8, (8, 32): 12, (8, 64): 12, (8, 128): 8}


def supported(keys: PackedRows | torch.Tensor, values: PackedRows | torch.Tensor, rows: int) -> bool:
    """Whether this kernel reads these rows: packed per-token whole-row groups, 4/8 bits, CUDA, <= 16 rows."""
    def ok(x) -> bool:  # >= 16 words a row (one mma k16), 16-byte loads; head_dim 256 is untested (registers)
        words = x.dim * x.bits // 32 if isinstance(x, PackedRows) else 0
        return (isinstance(x, PackedRows) and x.codes.is_cuda and x.axis == "token" and x.group == x.dim
                and x.bits in (4, 8) and x.dim in (64, 128) and words >= 16 and x.codes.data_ptr() % 16 == 0)
    return ok(keys) and ok(values) and keys.bits == values.bits and keys.dim == values.dim and rows <= ROWS


def plan(segments: int, rows: int, sms: int, bits: int) -> tuple[int, int, bool, bool]:
    """(tile rows, programs per multiprocessor, prefetch, one whole wave) for a cache's shape; measured on an H100.

    Many segments (batch x KV heads >= half the multiprocessors): 64-row tiles, exactly one wave of
    resident programs - a few programs over one wave cost 25-30% (they run as a second round).
    Few segments (batch 1-4): slices are short whatever is chosen, so 32-row tiles that load the
    next tile before working on this one (a warp then hides its own memory latency), and 4 programs
    per multiprocessor up to 256K rows, 8 above (benchmarks/RESULTS.md, "Gluon").
    """
    if 2 * segments >= sms:
        return 64, RESIDENT[bits, 64], False, True
    return 32, 4 if rows <= (1 << 18) else 8, True, False


def _bits(n: int) -> list[int]:
    return [1 << i for i in range(n.bit_length() - 1)]


@functools.lru_cache(maxsize=64)
def layouts(bits: int, dim: int, block: int) -> dict:
    """The constexpr layouts of one (bits, head_dim, tile) configuration; ``g`` = lane // 4, ``t`` = lane % 4.

    ``KLOAD``: lane ``(g, t)`` holds words ``[t*u, (t+1)*u)`` (``u`` = a quarter row) of score rows
    ``g, g+8, ..``, memory order. ``VLOAD``: words ``[g*v, (g+1)*v)`` (``v`` = an eighth of a row) of
    tokens ``2t, 2t+1, 2t+8, 2t+9, ..`` (the value product's reduction index), memory order;
    ``VPAIR``: the same registers with tokens ``2i, 2i+1`` adjacent, which the pair unpacking reads
    (whole 32-bit registers renamed, no data moves). ``SLOAD``: lane ``(g, t)`` holds the scales
    of rows ``g*block/8 ..``, contiguous (``t`` repeats them).
    """
    words = dim * bits // 32
    u, v = words // 4, words // 8
    mma = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, 1], instr_shape=[16, 8])
    rows = [[8 * b, 0] for b in _bits(block // 8)]
    kload = gl.DistributedLinearLayout(reg_bases=[[0, b] for b in _bits(u)] + rows,
                                       lane_bases=[[0, u], [0, 2 * u], [1, 0], [2, 0], [4, 0]], warp_bases=[],
                                       block_bases=[], shape=[block, words])
    lanes = [[2, 0], [4, 0], [0, v], [0, 2 * v], [0, 4 * v]]
    vwords = [[0, b] for b in _bits(v)]
    vload = gl.DistributedLinearLayout(reg_bases=vwords + [[1, 0]] + rows, lane_bases=lanes, warp_bases=[],
                                       block_bases=[], shape=[block, words])
    vpair = gl.DistributedLinearLayout(reg_bases=[[1, 0]] + vwords + rows, lane_bases=lanes, warp_bases=[],
                                       block_bases=[], shape=[block, words])
    per = block // 8
    sload = gl.DistributedLinearLayout(reg_bases=[[0, b] for b in _bits(per)],
                                       lane_bases=[[0, 0], [0, 0], [1, 0], [2, 0], [4, 0]], warp_bases=[],
                                       block_bases=[], shape=[8, per])
    return dict(MMA=mma, KLOAD=kload, VLOAD=vload, VPAIR=vpair, SLOAD=sload)


@gluon.jit
def _pairs(w, BITS: gl.constexpr):
    """Float16 ``offset + code`` pairs of word pairs (pack=2): output ``j`` is channel ``j`` of each word."""
    if BITS == 4:
        c0, c1, c2, c3, c4, c5, c6, c7 = gl.inline_asm_elementwise(
            OFFSET_PAIR_ASM_4, "=r,=r,=r,=r,=r,=r,=r,=r,r,r", [w],
            dtype=(gl.float16, gl.float16, gl.float16, gl.float16, gl.float16, gl.float16, gl.float16, gl.float16),
            is_pure=True, pack=2)
    else:
        c0, c1, c2, c3 = gl.inline_asm_elementwise(
            OFFSET_PAIR_ASM_8, "=r,=r,=r,=r,r,r", [w], dtype=(gl.float16, gl.float16, gl.float16, gl.float16),
            is_pure=True, pack=2)
        c4 = c0
        c5 = c0
        c6 = c0
        c7 = c0
    return c0, c1, c2, c3, c4, c5, c6, c7


@gluon.jit
def _key_word(k, U: gl.constexpr):
    """Word (within a key row) at reduction index ``k``: lane ``t`` reads words ``t*U ..``, paired ``(2i, 2i+1)``."""
    return U * ((k >> 1) & 3) + (k & 1) + 2 * (k >> 3)


@gluon.jit
def _value_word(m, V: gl.constexpr):
    """Word (within a value row) of output row ``m`` of ``V^T p^T``: lane group ``g`` reads words ``g*V ..``."""
    return V * (m % 8) + m // 8


@gluon.jit
def _token_row(m, BLOCK: gl.constexpr):
    """Cache row (within a tile) of score row ``m``: lane group ``g``'s rows ``g, g+8, ..`` are ``g*BLOCK/8 ..``."""
    return (BLOCK // 8) * (m % 8) + m // 8


@gluon.jit
def _query(Q, seg, M: gl.constexpr, D: gl.constexpr, QN: gl.constexpr, qk_scale, j: gl.constexpr,
           CW: gl.constexpr, DW: gl.constexpr, B_OP: gl.constexpr):
    """``q^T`` restricted to channel ``j`` of each key word, in key-word order: the B operand ``[DW, QN]``."""
    k = gl.arange(0, DW, layout=gl.SliceLayout(1, B_OP))
    n = gl.arange(0, QN, layout=gl.SliceLayout(0, B_OP))
    ptr = Q + (seg * M + n[None, :]) * D + CW * _key_word(k, DW // 4)[:, None] + j
    return gl.load(ptr, mask=(n < M)[None, :], other=0.0).to(gl.float32) * qk_scale


@gluon.jit
def _value_operand(x, BLOCK: gl.constexpr, DW: gl.constexpr, A_OP: gl.constexpr):
    """Value tile ``[tokens, words]`` as ``V^T``'s A operand ``[words, tokens]``: word ``g*v + j`` is row ``8j + g``."""
    x = gl.reshape(gl.permute(gl.reshape(x, [BLOCK, 8, DW // 8]), [2, 1, 0]), [DW, BLOCK])
    return gl.convert_layout(x, A_OP)


@gluon.jit
def _scale_tile(PTR, b, r_lo, r_hi, BLOCK: gl.constexpr, SLOAD: gl.constexpr, TOK: gl.constexpr):
    """Per-row float16 scales of rows ``b ..`` (8-aligned) in score-row order; rows outside ``[r_lo, r_hi)`` read 0."""
    PER: gl.constexpr = BLOCK // 8
    g = gl.arange(0, 8, layout=gl.SliceLayout(1, SLOAD))
    r = gl.arange(0, PER, layout=gl.SliceLayout(0, SLOAD))
    rows = b + g[:, None] * PER + r[None, :]
    if (b >= r_lo) & (b + BLOCK <= r_hi):  # whole tile inside: vector loads need no per-row mask
        x = gl.load(PTR + rows)
    else:
        x = gl.load(PTR + rows, mask=(rows >= r_lo) & (rows < r_hi), other=0.0)
    return gl.convert_layout(gl.reshape(gl.permute(x, [1, 0]), [BLOCK]), TOK, assert_trivial=True)


@gluon.jit
def _tile_loads(K, KS, KZ, V, VS, VZ, b, r_lo, r_hi, krow, kword, vrow, vword, DW: gl.constexpr,
                BLOCK: gl.constexpr, K_SYM: gl.constexpr, V_SYM: gl.constexpr, SLOAD: gl.constexpr,
                TOK: gl.constexpr):
    """Everything tile ``b`` reads from memory: key words, value words, scales and zeros (outside rows: 0)."""
    rk = b + krow
    kw = gl.load(K + rk[:, None] * DW + kword[None, :], mask=((rk >= r_lo) & (rk < r_hi))[:, None], other=0)
    rv = b + vrow
    w = gl.load(V + rv[:, None] * DW + vword[None, :], mask=((rv >= r_lo) & (rv < r_hi))[:, None], other=0)
    ks = _scale_tile(KS, b, r_lo, r_hi, BLOCK, SLOAD, TOK)
    kz = ks
    if not K_SYM:
        kz = _scale_tile(KZ, b, r_lo, r_hi, BLOCK, SLOAD, TOK)
    vs = _scale_tile(VS, b, r_lo, r_hi, BLOCK, SLOAD, TOK)
    vz = vs
    if not V_SYM:
        vz = _scale_tile(VZ, b, r_lo, r_hi, BLOCK, SLOAD, TOK)
    return kw, w, ks, kz, vs, vz


@gluon.jit
def _attend(acc, alpha, a_op, pb, zero):
    return acc * alpha[None, :] + mma_v2(a_op, pb, zero)


@gluon.jit
def _store(WORK, slot, acc, vbias, inv, j: gl.constexpr, M: gl.constexpr, D: gl.constexpr, QN: gl.constexpr,
           CW: gl.constexpr, DW: gl.constexpr, MMA: gl.constexpr):
    """Output rows of ``V^T p^T`` for channel ``j`` of each value word, back in channel order."""
    m = gl.arange(0, DW, layout=gl.SliceLayout(1, MMA))
    n = gl.arange(0, QN, layout=gl.SliceLayout(0, MMA))
    ptr = WORK + (slot * 16 + n[None, :]) * D + CW * _value_word(m, DW // 8)[:, None] + j
    gl.store(ptr, (acc + vbias[None, :]) * inv[None, :], mask=(n < M)[None, :])


@gluon.jit
def _packed_split_kernel(
    Q, K, KS, KZ, V, VS, VZ, STARTS, LENS, WORK, l_off, qk_scale, chunk, splits_total,
    M: gl.constexpr, D: gl.constexpr, BITS: gl.constexpr, BLOCK: gl.constexpr, QN: gl.constexpr,
    K_SYM: gl.constexpr, V_SYM: gl.constexpr, MMA: gl.constexpr, KLOAD: gl.constexpr, VLOAD: gl.constexpr,
    VPAIR: gl.constexpr, SLOAD: gl.constexpr, PREFETCH: gl.constexpr,
):
    """One warp: segment ``program_id(0)``'s query rows over its rows ``[lo, hi)``; partials to the workspace."""
    DW: gl.constexpr = D * BITS // 32  # words per row
    CW: gl.constexpr = 32 // BITS  # channels per word
    U: gl.constexpr = DW // 4
    HALF: gl.constexpr = 1 << (BITS - 1)
    OFFSET: gl.constexpr = 64.0 if BITS == 4 else 1024.0  # codes enter the products as OFFSET + code
    A_OP: gl.constexpr = gl.DotOperandLayout(0, MMA, 2)
    B_OP: gl.constexpr = gl.DotOperandLayout(1, MMA, 2)
    TOK: gl.constexpr = gl.SliceLayout(1, MMA)  # per score row (token)
    QRY: gl.constexpr = gl.SliceLayout(0, MMA)  # per query row

    seg = gl.program_id(0)
    split = gl.program_id(1)
    slot = seg * splits_total + split
    start = gl.load(STARTS + seg)
    n = gl.load(LENS + seg)
    lo = split * chunk
    hi = gl.minimum(lo + chunk, n)

    f0 = _query(Q, seg, M, D, QN, qk_scale, 0, CW, DW, B_OP)
    f1 = _query(Q, seg, M, D, QN, qk_scale, 1, CW, DW, B_OP)
    f2 = _query(Q, seg, M, D, QN, qk_scale, 2, CW, DW, B_OP)
    f3 = _query(Q, seg, M, D, QN, qk_scale, 3, CW, DW, B_OP)
    qsum = gl.sum(f0, 0) + gl.sum(f1, 0) + gl.sum(f2, 0) + gl.sum(f3, 0)
    q0 = f0.to(gl.float16)
    q1 = f1.to(gl.float16)
    q2 = f2.to(gl.float16)
    q3 = f3.to(gl.float16)
    q4 = q0
    q5 = q0
    q6 = q0
    q7 = q0
    if BITS == 4:
        f4 = _query(Q, seg, M, D, QN, qk_scale, 4, CW, DW, B_OP)
        f5 = _query(Q, seg, M, D, QN, qk_scale, 5, CW, DW, B_OP)
        f6 = _query(Q, seg, M, D, QN, qk_scale, 6, CW, DW, B_OP)
        f7 = _query(Q, seg, M, D, QN, qk_scale, 7, CW, DW, B_OP)
        qsum += gl.sum(f4, 0) + gl.sum(f5, 0) + gl.sum(f6, 0) + gl.sum(f7, 0)
        q4 = f4.to(gl.float16)
        q5 = f5.to(gl.float16)
        q6 = f6.to(gl.float16)
        q7 = f7.to(gl.float16)
    qsum = gl.convert_layout(qsum, QRY)
    # the float16 query as it enters the products, summed: the score accumulator starts at -OFFSET times it
    q16 = gl.sum(q0.to(gl.float32), 0) + gl.sum(q1.to(gl.float32), 0) + gl.sum(q2.to(gl.float32), 0)
    q16 += gl.sum(q3.to(gl.float32), 0)
    if BITS == 4:
        q16 += gl.sum(q4.to(gl.float32), 0) + gl.sum(q5.to(gl.float32), 0) + gl.sum(q6.to(gl.float32), 0)
        q16 += gl.sum(q7.to(gl.float32), 0)
    s_init = gl.zeros([BLOCK, QN], gl.float32, MMA) - OFFSET * gl.convert_layout(q16, QRY)[None, :]

    m_i = gl.full([QN], float("-inf"), gl.float32, QRY)
    l_i = gl.zeros([QN], gl.float32, QRY)
    vbias = gl.zeros([QN], gl.float32, QRY)
    acc0 = gl.zeros([DW, QN], gl.float32, MMA)
    acc1 = acc0
    acc2 = acc0
    acc3 = acc0
    acc4 = acc0
    acc5 = acc0
    acc6 = acc0
    acc7 = acc0

    krow = _token_row(gl.arange(0, BLOCK, layout=gl.SliceLayout(1, KLOAD)), BLOCK)
    kword = gl.arange(0, DW, layout=gl.SliceLayout(0, KLOAD))
    vrow = _token_row(gl.arange(0, BLOCK, layout=gl.SliceLayout(1, VLOAD)), BLOCK)
    vword = gl.arange(0, DW, layout=gl.SliceLayout(0, VLOAD))
    srow = _token_row(gl.arange(0, BLOCK, layout=TOK), BLOCK)
    r_lo = start + lo
    r_hi = start + hi
    first = (r_lo // 8) * 8  # tiles start on 8-row boundaries: aligned scale loads
    if PREFETCH:  # the next tile's loads go out before this tile's arithmetic (few warps per SM: batch 1)
        kw, w, ks, kz, vs, vz = _tile_loads(K, KS, KZ, V, VS, VZ, first, r_lo, r_hi, krow, kword, vrow, vword, DW,
                                            BLOCK, K_SYM, V_SYM, SLOAD, TOK)
    for b in range(first, r_hi, BLOCK):
        b = gl.multiple_of(b, 8)
        if PREFETCH:
            nkw, nw, nks, nkz, nvs, nvz = _tile_loads(K, KS, KZ, V, VS, VZ, b + BLOCK, r_lo, r_hi, krow, kword, vrow,
                                                      vword, DW, BLOCK, K_SYM, V_SYM, SLOAD, TOK)
        else:  # each load right before its use keeps fewer registers live (more warps per SM)
            rk = b + krow
            kw = gl.load(K + rk[:, None] * DW + kword[None, :], mask=((rk >= r_lo) & (rk < r_hi))[:, None], other=0)
        # words t*U + 2i', +1 become reduction indices 8i' + 2t, +1: pairs stay in adjacent registers
        kpairs = gl.reshape(gl.permute(gl.reshape(kw, [BLOCK, 2, 2, U // 2, 2]), [0, 3, 1, 2, 4]), [BLOCK, DW])
        k0, k1, k2, k3, k4, k5, k6, k7 = _pairs(kpairs, BITS)
        s = mma_v2(gl.convert_layout(k0, A_OP), q0, s_init)
        s = mma_v2(gl.convert_layout(k1, A_OP), q1, s)
        s = mma_v2(gl.convert_layout(k2, A_OP), q2, s)
        s = mma_v2(gl.convert_layout(k3, A_OP), q3, s)
        if BITS == 4:
            s = mma_v2(gl.convert_layout(k4, A_OP), q4, s)
            s = mma_v2(gl.convert_layout(k5, A_OP), q5, s)
            s = mma_v2(gl.convert_layout(k6, A_OP), q6, s)
            s = mma_v2(gl.convert_layout(k7, A_OP), q7, s)
        rs = b + srow
        valid = (rs >= r_lo) & (rs < r_hi)
        if not PREFETCH:
            ks = _scale_tile(KS, b, r_lo, r_hi, BLOCK, SLOAD, TOK)
            kz = ks
            if not K_SYM:
                kz = _scale_tile(KZ, b, r_lo, r_hi, BLOCK, SLOAD, TOK)
        if K_SYM:
            s = (s - HALF * qsum[None, :]) * ks.to(gl.float32)[:, None]
        else:
            s = s * ks.to(gl.float32)[:, None] + kz.to(gl.float32)[:, None] * qsum[None, :]
        s = gl.where(valid[:, None], s, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(s, 0))
        m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)
        p = gl.exp2(s - m_safe[None, :])
        alpha = gl.exp2(m_i - m_safe)
        l_i = l_i * alpha + gl.sum(p, 0)
        m_i = m_new

        if not PREFETCH:
            vs = _scale_tile(VS, b, r_lo, r_hi, BLOCK, SLOAD, TOK)
            vz = vs
            if not V_SYM:
                vz = _scale_tile(VZ, b, r_lo, r_hi, BLOCK, SLOAD, TOK)
        ps = p * vs.to(gl.float32)[:, None]
        if V_SYM:
            vbias = vbias * alpha - HALF * gl.sum(ps, 0)
        else:
            vbias = vbias * alpha + gl.sum(p * vz.to(gl.float32)[:, None], 0)
        p16 = ps.to(gl.float16)
        pb = gl.convert_layout(p16, B_OP)
        if not PREFETCH:
            rv = b + vrow
            w = gl.load(V + rv[:, None] * DW + vword[None, :], mask=((rv >= r_lo) & (rv < r_hi))[:, None], other=0)
        v0, v1, v2, v3, v4, v5, v6, v7 = _pairs(gl.convert_layout(w, VPAIR), BITS)
        zo = gl.zeros([DW, QN], gl.float32, MMA) - OFFSET * gl.sum(p16.to(gl.float32), 0)[None, :]
        acc0 = _attend(acc0, alpha, _value_operand(v0, BLOCK, DW, A_OP), pb, zo)
        acc1 = _attend(acc1, alpha, _value_operand(v1, BLOCK, DW, A_OP), pb, zo)
        acc2 = _attend(acc2, alpha, _value_operand(v2, BLOCK, DW, A_OP), pb, zo)
        acc3 = _attend(acc3, alpha, _value_operand(v3, BLOCK, DW, A_OP), pb, zo)
        if BITS == 4:
            acc4 = _attend(acc4, alpha, _value_operand(v4, BLOCK, DW, A_OP), pb, zo)
            acc5 = _attend(acc5, alpha, _value_operand(v5, BLOCK, DW, A_OP), pb, zo)
            acc6 = _attend(acc6, alpha, _value_operand(v6, BLOCK, DW, A_OP), pb, zo)
            acc7 = _attend(acc7, alpha, _value_operand(v7, BLOCK, DW, A_OP), pb, zo)
        if PREFETCH:
            kw, w, ks, kz, vs, vz = nkw, nw, nks, nkz, nvs, nvz

    has = l_i > 0.0
    inv = 1.0 / gl.where(has, l_i, 1.0)
    lse = gl.where(has, m_i + gl.log2(gl.where(has, l_i, 1.0)), float("-inf"))
    _store(WORK, slot, acc0, vbias, inv, 0, M, D, QN, CW, DW, MMA)
    _store(WORK, slot, acc1, vbias, inv, 1, M, D, QN, CW, DW, MMA)
    _store(WORK, slot, acc2, vbias, inv, 2, M, D, QN, CW, DW, MMA)
    _store(WORK, slot, acc3, vbias, inv, 3, M, D, QN, CW, DW, MMA)
    if BITS == 4:
        _store(WORK, slot, acc4, vbias, inv, 4, M, D, QN, CW, DW, MMA)
        _store(WORK, slot, acc5, vbias, inv, 5, M, D, QN, CW, DW, MMA)
        _store(WORK, slot, acc6, vbias, inv, 6, M, D, QN, CW, DW, MMA)
        _store(WORK, slot, acc7, vbias, inv, 7, M, D, QN, CW, DW, MMA)
    qn = gl.arange(0, QN, layout=QRY)
    gl.store(WORK + l_off + slot * 16 + qn, lse)


def _int_key(x: int) -> int:
    """How Triton specializes an integer argument (1, a multiple of 16, or neither): part of a compiled kernel's key."""
    return 1 if x == 1 else (16 if x % 16 == 0 else 0)


class Launch:
    """The Gluon kernel prepared for fixed packed rows, launched without Triton's per-call dispatch.

    Triton's dispatch binds the arguments and hashes the constexpr layouts on every call - about as
    long as the kernel itself at batch 1 (a decode step over 32 layers spent ~5 ms more with it than
    with the Triton kernel). The first call of each shape goes through it and compiles; later calls
    launch the compiled kernel directly, keyed on everything Triton specializes on (query rows and
    dtype, pointer alignment, integer divisibility), so a call that would compile differently
    still goes the long way.
    """

    def __init__(self, keys: PackedRows, values: PackedRows, starts: torch.Tensor, lengths: torch.Tensor,
                 block: int, prefetch: bool) -> None:
        z = lambda x: x.zeros if x.zeros is not None else x.scales  # noqa: E731
        self.rows = (keys.codes.view(torch.int32), keys.scales, z(keys), values.codes.view(torch.int32),
                     values.scales, z(values), starts, lengths)
        self.consts = dict(D=keys.dim, BITS=keys.bits, BLOCK=block, K_SYM=keys.zeros is None,
                           V_SYM=values.zeros is None, PREFETCH=prefetch, **layouts(keys.bits, keys.dim, block))
        self.compiled: dict[tuple, tuple] = {}

    def __call__(self, q: torch.Tensor, work: torch.Tensor, l_off: int, qk_scale: float, chunk: int, splits: int,
                 splits_total: int) -> None:
        """Slices ``0 .. splits`` of every segment into ``work`` (the Triton kernel's workspace, 16 rows a slice)."""
        S, M, _ = q.shape
        grid = (S, splits, 1)
        args = (q, *self.rows, work, l_off, qk_scale, chunk, splits_total)
        key = (M, q.dtype, q.device, q.data_ptr() % 16 == 0, work.data_ptr() % 16 == 0, _int_key(l_off),
               _int_key(chunk), _int_key(splits_total))
        known = self.compiled.get(key)
        if known is None:
            consts = dict(self.consts, M=M, QN=8 if M <= 8 else 16)
            kernel = _packed_split_kernel[grid](*args, num_warps=1, **consts)
            names = _packed_split_kernel.arg_names[len(args):]
            self.compiled[key] = (kernel, tuple(consts[n] for n in names))
            return
        kernel, tail = known
        everything = args + tail
        stream = driver.active.get_current_stream(q.device.index)
        meta = kernel.launch_metadata(grid, stream, *everything)
        kernel.run(*grid, stream, kernel.function, kernel.packed_metadata, meta, knobs.runtime.launch_enter_hook,
                   knobs.runtime.launch_exit_hook, *everything)
