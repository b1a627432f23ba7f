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

Scope (:func:`supported`): per-token groups spanning the whole row or half of it, for keys and values
(``kt128 v128`` or ``kt64 v64`` at head_dim 128 - the latter is the default ``int4``), 4 bits with
head_dim 128 or 8 bits with head_dim 64/128, up to 16 query rows per KV head, codes 16-byte aligned.
Two groups a row cost a second score product (the query split by half) and a second value product
(``p`` scaled per half). Everything else, and the dense tail, goes to the Triton kernel.
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
# One wave of one-warp programs per multiprocessor, by (bits, tile rows, scale groups a row): 65536 registers /
# (32 lanes x the registers Triton 3.6 gives the kernel for sm_90; `python benchmarks/kernel_resources.py
# --gluon`): one group - INT4 158 / 168 / 250, INT8 166 / 224 / 255 at 32 / 64 / 128 rows; two groups - INT4 219,
# INT8 222 at 32 rows. Except INT8 at 64 rows, one group, where 9 by registers measured 1.36x SDPA and 12
# (1.3 waves) 1.60x on an H100 (benchmarks/RESULTS.md). It sets how many slices one launch makes.
RESIDENT = {(4, 32, 1): 12, (4, 64, 1): 12, (4, 128, 1): 8, (8, 32, 1): 12, (8, 64, 1): 12, (8, 128, 1): 8,
            (4, 32, 2): 9, (8, 32, 2): 9}


def supported(keys: PackedRows | torch.Tensor, values: PackedRows | torch.Tensor, rows: int) -> bool:
    """Whether this kernel reads these rows: packed per token in one or two scale groups a row, 4/8 bits, CUDA."""
    def ok(x) -> bool:  # >= 16 words a row (one mma k16), 16-byte loads; head_dim 256 is untested (registers)
        words = x.dim * x.bits // 32 if isinstance(x, PackedRows) else 0
        return (isinstance(x, PackedRows) and x.codes.is_cuda and x.axis == "token" and x.group in (x.dim, x.dim // 2)
                and x.bits in (4, 8) and x.dim in (64, 128) and words >= 16 and x.codes.data_ptr() % 16 == 0)
    return ok(keys) and ok(values) and keys.bits == values.bits and keys.dim == values.dim and rows <= ROWS


def plan(segments: int, rows: int, sms: int, bits: int, groups: int = 1) -> tuple[int, int, bool, bool]:
    """(tile rows, programs per multiprocessor, prefetch, one whole wave) for a cache's shape; measured on an H100.

    Many segments (batch x KV heads >= half the multiprocessors): 64-row tiles (32 with two scale groups
    a row), exactly one wave of
    resident programs - a few programs over one wave cost 25-30% (they run as a second round).
    Few segments (batch 1-4): slices are short whatever is chosen, so 32-row tiles that load the
    next tile before working on this one (a warp then hides its own memory latency), and 4 programs
    per multiprocessor up to 256K rows, 8 above (benchmarks/RESULTS.md, "Gluon"). Prefetching is for rows in
    one scale group (``groups`` = the most groups a row of keys or values has).
    """
    if 2 * segments >= sms:  # two groups a row hold more registers: 32-row tiles keep them from spilling
        block = 64 if groups == 1 else 32
        return block, RESIDENT[bits, block, groups], False, True
    return 32, 4 if rows <= (1 << 18) else 8, groups == 1, False


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
    sload2 = gl.DistributedLinearLayout(reg_bases=[[0, b] for b in _bits(2 * per)],
                                        lane_bases=[[0, 0], [0, 0], [1, 0], [2, 0], [4, 0]], warp_bases=[],
                                        block_bases=[], shape=[8, 2 * per])
    return dict(MMA=mma, KLOAD=kload, VLOAD=vload, VPAIR=vpair, SLOAD=sload, SLOAD2=sload2)


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
def _scale_zero(S, Z, b, r_lo, r_hi, SYM: gl.constexpr, BLOCK: gl.constexpr, SLOAD: gl.constexpr, TOK: gl.constexpr):
    """A tile's per-row scales and zero points (the scales again for symmetric codes, which have none)."""
    x = _scale_tile(S, b, r_lo, r_hi, BLOCK, SLOAD, TOK)
    z = x
    if not SYM:
        z = _scale_tile(Z, b, r_lo, r_hi, BLOCK, SLOAD, TOK)
    return x, z


@gluon.jit
def _tile_loads(K, KS, KZ, V, VS, VZ, b, r_lo, r_hi, krow, kword, vrow, vword, DW: gl.constexpr,
                BLOCK: gl.constexpr, K_SYM: gl.constexpr, V_SYM: gl.constexpr, SLOAD: gl.constexpr,
                TOK: gl.constexpr):
    """Everything tile ``b`` reads from memory: key words, value words, scales and zeros (outside rows: 0)."""
    rk = b + krow
    kw = gl.load(K + rk[:, None] * DW + kword[None, :], mask=((rk >= r_lo) & (rk < r_hi))[:, None], other=0)
    rv = b + vrow
    w = gl.load(V + rv[:, None] * DW + vword[None, :], mask=((rv >= r_lo) & (rv < r_hi))[:, None], other=0)
    ks, kz = _scale_zero(KS, KZ, b, r_lo, r_hi, K_SYM, BLOCK, SLOAD, TOK)
    vs, vz = _scale_zero(VS, VZ, b, r_lo, r_hi, V_SYM, BLOCK, SLOAD, TOK)
    return kw, w, ks, kz, vs, vz


@gluon.jit
def _qk(k0, k1, k2, k3, k4, k5, k6, k7, q0, q1, q2, q3, q4, q5, q6, q7, init, BITS: gl.constexpr,
        A_OP: gl.constexpr):
    """``K q^T`` of one tile: one product per channel of a key word (8 at 4 bits, 4 at 8), chained."""
    s = mma_v2(gl.convert_layout(k0, A_OP), q0, init)
    s = mma_v2(gl.convert_layout(k1, A_OP), q1, s)
    s = mma_v2(gl.convert_layout(k2, A_OP), q2, s)
    s = mma_v2(gl.convert_layout(k3, A_OP), q3, s)
    if BITS == 4:
        s = mma_v2(gl.convert_layout(k4, A_OP), q4, s)
        s = mma_v2(gl.convert_layout(k5, A_OP), q5, s)
        s = mma_v2(gl.convert_layout(k6, A_OP), q6, s)
        s = mma_v2(gl.convert_layout(k7, A_OP), q7, s)
    return s


@gluon.jit
def _half(f, keep):
    """The float16 query operand restricted to one half of the row (two scale groups a row)."""
    return gl.where(keep, f, 0.0).to(gl.float16)


@gluon.jit
def _f16sum(q0, q1, q2, q3, q4, q5, q6, q7, BITS: gl.constexpr):
    """Sum over a row of the float16 operand as it enters the products (the offset's cancelling term)."""
    t = gl.sum(q0.to(gl.float32), 0) + gl.sum(q1.to(gl.float32), 0) + gl.sum(q2.to(gl.float32), 0)
    t += gl.sum(q3.to(gl.float32), 0)
    if BITS == 4:
        t += gl.sum(q4.to(gl.float32), 0) + gl.sum(q5.to(gl.float32), 0) + gl.sum(q6.to(gl.float32), 0)
        t += gl.sum(q7.to(gl.float32), 0)
    return t


@gluon.jit
def _scale_pair(PTR, b, r_lo, r_hi, BLOCK: gl.constexpr, SLOAD2: gl.constexpr, TOK: gl.constexpr):
    """Two scale groups a row (``[rows, 2]``): both halves' scales of rows ``b ..`` in score-row order, one load."""
    PER: gl.constexpr = BLOCK // 8
    g = gl.arange(0, 8, layout=gl.SliceLayout(1, SLOAD2))
    c = gl.arange(0, 2 * PER, layout=gl.SliceLayout(0, SLOAD2))
    rows = b + g[:, None] * PER + c[None, :] // 2
    idx = 2 * b + g[:, None] * (2 * PER) + c[None, :]
    if (b >= r_lo) & (b + BLOCK <= r_hi):
        x = gl.load(PTR + idx)
    else:
        x = gl.load(PTR + idx, mask=(rows >= r_lo) & (rows < r_hi), other=0.0)
    xa, xb = gl.split(gl.reshape(x, [8, PER, 2]))
    xa = gl.convert_layout(gl.reshape(gl.permute(xa, [1, 0]), [BLOCK]), TOK)
    xb = gl.convert_layout(gl.reshape(gl.permute(xb, [1, 0]), [BLOCK]), TOK)
    return xa, xb


@gluon.jit
def _attend2(acc, alpha, a_op, pba, zoa, pbb, zob, first_half):
    """As :func:`_attend` for values with two scale groups a row: each output row takes its half's product."""
    return acc * alpha[None, :] + gl.where(first_half, mma_v2(a_op, pba, zoa), mma_v2(a_op, pbb, zob))


@gluon.jit
def _attend(acc, alpha, a_op, pb, zero):
    return acc * alpha[None, :] + mma_v2(a_op, pb, zero)


@gluon.jit
def _store(WORK, slot, acc, vbias, inv, j: gl.constexpr, M: gl.constexpr, D: gl.constexpr, QN: gl.constexpr,
           CW: gl.constexpr, DW: gl.constexpr, MMA: gl.constexpr):
    """Output rows of ``V^T p^T`` for channel ``j`` of each value word, back in channel order (``vbias`` 2-D)."""
    m = gl.arange(0, DW, layout=gl.SliceLayout(1, MMA))
    n = gl.arange(0, QN, layout=gl.SliceLayout(0, MMA))
    ptr = WORK + (slot * 16 + n[None, :]) * D + CW * _value_word(m, DW // 8)[:, None] + j
    gl.store(ptr, (acc + vbias) * inv[None, :], mask=(n < M)[None, :])


@gluon.jit
def _packed_split_kernel(
    Q, K, KS, KZ, V, VS, VZ, STARTS, LENS, WORK, l_off, qk_scale, chunk, splits_total,
    M: gl.constexpr, D: gl.constexpr, BITS: gl.constexpr, BLOCK: gl.constexpr, QN: gl.constexpr,
    K_SYM: gl.constexpr, V_SYM: gl.constexpr, MMA: gl.constexpr, KLOAD: gl.constexpr, VLOAD: gl.constexpr,
    VPAIR: gl.constexpr, SLOAD: gl.constexpr, SLOAD2: gl.constexpr, PREFETCH: gl.constexpr, KG: gl.constexpr,
    VG: gl.constexpr,
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
    f4 = f0
    f5 = f0
    f6 = f0
    f7 = f0
    if BITS == 4:
        f4 = _query(Q, seg, M, D, QN, qk_scale, 4, CW, DW, B_OP)
        f5 = _query(Q, seg, M, D, QN, qk_scale, 5, CW, DW, B_OP)
        f6 = _query(Q, seg, M, D, QN, qk_scale, 6, CW, DW, B_OP)
        f7 = _query(Q, seg, M, D, QN, qk_scale, 7, CW, DW, B_OP)
    # the float16 query as it enters the products, summed: the score accumulator starts at -OFFSET times it
    if KG == 1:
        q0 = f0.to(gl.float16)
        q1 = f1.to(gl.float16)
        q2 = f2.to(gl.float16)
        q3 = f3.to(gl.float16)
        q4 = f4.to(gl.float16)
        q5 = f5.to(gl.float16)
        q6 = f6.to(gl.float16)
        q7 = f7.to(gl.float16)
        qsum = gl.sum(f0, 0) + gl.sum(f1, 0) + gl.sum(f2, 0) + gl.sum(f3, 0)
        if BITS == 4:
            qsum += gl.sum(f4, 0) + gl.sum(f5, 0) + gl.sum(f6, 0) + gl.sum(f7, 0)
        qsum = gl.convert_layout(qsum, QRY)
        q16 = _f16sum(q0, q1, q2, q3, q4, q5, q6, q7, BITS)
        s_init = gl.zeros([BLOCK, QN], gl.float32, MMA) - OFFSET * gl.convert_layout(q16, QRY)[None, :]
    else:  # two scale groups a key row: the query split into its halves, one product chain each
        kin = gl.expand_dims(_key_word(gl.arange(0, DW, layout=gl.SliceLayout(1, B_OP)), U) < DW // 2, 1)
        kout = kin == 0
        q0 = _half(f0, kin)
        q1 = _half(f1, kin)
        q2 = _half(f2, kin)
        q3 = _half(f3, kin)
        q4 = _half(f4, kin)
        q5 = _half(f5, kin)
        q6 = _half(f6, kin)
        q7 = _half(f7, kin)
        r0 = _half(f0, kout)
        r1 = _half(f1, kout)
        r2 = _half(f2, kout)
        r3 = _half(f3, kout)
        r4 = _half(f4, kout)
        r5 = _half(f5, kout)
        r6 = _half(f6, kout)
        r7 = _half(f7, kout)
        fa = gl.where(kin, f0 + f1 + f2 + f3, 0.0)
        fb = gl.where(kin, 0.0, f0 + f1 + f2 + f3)
        if BITS == 4:
            fa += gl.where(kin, f4 + f5 + f6 + f7, 0.0)
            fb += gl.where(kin, 0.0, f4 + f5 + f6 + f7)
        qsum = gl.convert_layout(gl.sum(fa, 0), QRY)
        qsum_b = gl.convert_layout(gl.sum(fb, 0), QRY)
        s_init = gl.zeros([BLOCK, QN], gl.float32, MMA) - OFFSET * gl.convert_layout(
            _f16sum(q0, q1, q2, q3, q4, q5, q6, q7, BITS), QRY)[None, :]
        s_init_b = gl.zeros([BLOCK, QN], gl.float32, MMA) - OFFSET * gl.convert_layout(
            _f16sum(r0, r1, r2, r3, r4, r5, r6, r7, BITS), QRY)[None, :]
    vhalf = gl.expand_dims(_value_word(gl.arange(0, DW, layout=gl.SliceLayout(1, MMA)), DW // 8) < DW // 2, 1)

    m_i = gl.full([QN], float("-inf"), gl.float32, QRY)
    l_i = gl.zeros([QN], gl.float32, QRY)
    vbias = gl.zeros([QN], gl.float32, QRY)
    vbias_b = vbias
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
        s = _qk(k0, k1, k2, k3, k4, k5, k6, k7, q0, q1, q2, q3, q4, q5, q6, q7, s_init, BITS, A_OP)
        rs = b + srow
        valid = (rs >= r_lo) & (rs < r_hi)
        if KG == 1:
            if not PREFETCH:
                ks, kz = _scale_zero(KS, KZ, b, r_lo, r_hi, K_SYM, BLOCK, SLOAD, TOK)
            if K_SYM:
                s = (s - HALF * qsum[None, :]) * ks.to(gl.float32)[:, None]
            else:
                s = s * ks.to(gl.float32)[:, None] + kz.to(gl.float32)[:, None] * qsum[None, :]
        else:
            sb = _qk(k0, k1, k2, k3, k4, k5, k6, k7, r0, r1, r2, r3, r4, r5, r6, r7, s_init_b, BITS, A_OP)
            ksa, ksb = _scale_pair(KS, b, r_lo, r_hi, BLOCK, SLOAD2, TOK)
            if K_SYM:
                s = ((s - HALF * qsum[None, :]) * ksa.to(gl.float32)[:, None]
                     + (sb - HALF * qsum_b[None, :]) * ksb.to(gl.float32)[:, None])
            else:
                kza, kzb = _scale_pair(KZ, b, r_lo, r_hi, BLOCK, SLOAD2, TOK)
                s = (s * ksa.to(gl.float32)[:, None] + kza.to(gl.float32)[:, None] * qsum[None, :]
                     + sb * ksb.to(gl.float32)[:, None] + kzb.to(gl.float32)[:, None] * qsum_b[None, :])
        s = gl.where(valid[:, None], s, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(s, 0))
        m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)
        p = gl.exp2(s - m_safe[None, :])
        alpha = gl.exp2(m_i - m_safe)
        l_i = l_i * alpha + gl.sum(p, 0)
        m_i = m_new

        if VG == 1:
            if not PREFETCH:
                vs, vz = _scale_zero(VS, VZ, b, r_lo, r_hi, V_SYM, BLOCK, SLOAD, TOK)
            ps = p * vs.to(gl.float32)[:, None]
            if V_SYM:
                vbias = vbias * alpha - HALF * gl.sum(ps, 0)
            else:
                vbias = vbias * alpha + gl.sum(p * vz.to(gl.float32)[:, None], 0)
            p16 = ps.to(gl.float16)
            pb = gl.convert_layout(p16, B_OP)
            zo = gl.zeros([DW, QN], gl.float32, MMA) - OFFSET * gl.sum(p16.to(gl.float32), 0)[None, :]
            if not PREFETCH:
                rv = b + vrow
                w = gl.load(V + rv[:, None] * DW + vword[None, :], mask=((rv >= r_lo) & (rv < r_hi))[:, None],
                            other=0)
            v0, v1, v2, v3, v4, v5, v6, v7 = _pairs(gl.convert_layout(w, VPAIR), BITS)
            acc0 = _attend(acc0, alpha, _value_operand(v0, BLOCK, DW, A_OP), pb, zo)
            acc1 = _attend(acc1, alpha, _value_operand(v1, BLOCK, DW, A_OP), pb, zo)
            acc2 = _attend(acc2, alpha, _value_operand(v2, BLOCK, DW, A_OP), pb, zo)
            acc3 = _attend(acc3, alpha, _value_operand(v3, BLOCK, DW, A_OP), pb, zo)
            if BITS == 4:
                acc4 = _attend(acc4, alpha, _value_operand(v4, BLOCK, DW, A_OP), pb, zo)
                acc5 = _attend(acc5, alpha, _value_operand(v5, BLOCK, DW, A_OP), pb, zo)
                acc6 = _attend(acc6, alpha, _value_operand(v6, BLOCK, DW, A_OP), pb, zo)
                acc7 = _attend(acc7, alpha, _value_operand(v7, BLOCK, DW, A_OP), pb, zo)
        else:  # two scale groups a value row: p scaled per half, each output row keeps its half's product
            vsa, vsb = _scale_pair(VS, b, r_lo, r_hi, BLOCK, SLOAD2, TOK)
            psa = p * vsa.to(gl.float32)[:, None]
            psb = p * vsb.to(gl.float32)[:, None]
            if V_SYM:
                vbias = vbias * alpha - HALF * gl.sum(psa, 0)
                vbias_b = vbias_b * alpha - HALF * gl.sum(psb, 0)
            else:
                vza, vzb = _scale_pair(VZ, b, r_lo, r_hi, BLOCK, SLOAD2, TOK)
                vbias = vbias * alpha + gl.sum(p * vza.to(gl.float32)[:, None], 0)
                vbias_b = vbias_b * alpha + gl.sum(p * vzb.to(gl.float32)[:, None], 0)
            pa16 = psa.to(gl.float16)
            pb16 = psb.to(gl.float16)
            pba = gl.convert_layout(pa16, B_OP)
            pbb = gl.convert_layout(pb16, B_OP)
            zoa = gl.zeros([DW, QN], gl.float32, MMA) - OFFSET * gl.sum(pa16.to(gl.float32), 0)[None, :]
            zob = gl.zeros([DW, QN], gl.float32, MMA) - OFFSET * gl.sum(pb16.to(gl.float32), 0)[None, :]
            rv = b + vrow
            w = gl.load(V + rv[:, None] * DW + vword[None, :], mask=((rv >= r_lo) & (rv < r_hi))[:, None], other=0)
            v0, v1, v2, v3, v4, v5, v6, v7 = _pairs(gl.convert_layout(w, VPAIR), BITS)
            acc0 = _attend2(acc0, alpha, _value_operand(v0, BLOCK, DW, A_OP), pba, zoa, pbb, zob, vhalf)
            acc1 = _attend2(acc1, alpha, _value_operand(v1, BLOCK, DW, A_OP), pba, zoa, pbb, zob, vhalf)
            acc2 = _attend2(acc2, alpha, _value_operand(v2, BLOCK, DW, A_OP), pba, zoa, pbb, zob, vhalf)
            acc3 = _attend2(acc3, alpha, _value_operand(v3, BLOCK, DW, A_OP), pba, zoa, pbb, zob, vhalf)
            if BITS == 4:
                acc4 = _attend2(acc4, alpha, _value_operand(v4, BLOCK, DW, A_OP), pba, zoa, pbb, zob, vhalf)
                acc5 = _attend2(acc5, alpha, _value_operand(v5, BLOCK, DW, A_OP), pba, zoa, pbb, zob, vhalf)
                acc6 = _attend2(acc6, alpha, _value_operand(v6, BLOCK, DW, A_OP), pba, zoa, pbb, zob, vhalf)
                acc7 = _attend2(acc7, alpha, _value_operand(v7, BLOCK, DW, A_OP), pba, zoa, pbb, zob, vhalf)
        if PREFETCH:
            kw, w, ks, kz, vs, vz = nkw, nw, nks, nkz, nvs, nvz

    has = l_i > 0.0
    inv = 1.0 / gl.where(has, l_i, 1.0)
    lse = gl.where(has, m_i + gl.log2(gl.where(has, l_i, 1.0)), float("-inf"))
    if VG == 2:
        bias = gl.where(vhalf, vbias[None, :], vbias_b[None, :])
    else:
        bias = vbias[None, :]
    _store(WORK, slot, acc0, bias, inv, 0, M, D, QN, CW, DW, MMA)
    _store(WORK, slot, acc1, bias, inv, 1, M, D, QN, CW, DW, MMA)
    _store(WORK, slot, acc2, bias, inv, 2, M, D, QN, CW, DW, MMA)
    _store(WORK, slot, acc3, bias, inv, 3, M, D, QN, CW, DW, MMA)
    if BITS == 4:
        _store(WORK, slot, acc4, bias, inv, 4, M, D, QN, CW, DW, MMA)
        _store(WORK, slot, acc5, bias, inv, 5, M, D, QN, CW, DW, MMA)
        _store(WORK, slot, acc6, bias, inv, 6, M, D, QN, CW, DW, MMA)
        _store(WORK, slot, acc7, bias, inv, 7, M, D, QN, CW, DW, MMA)
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
        kg, vg = keys.dim // keys.group, values.dim // values.group
        self.consts = dict(D=keys.dim, BITS=keys.bits, BLOCK=block, K_SYM=keys.zeros is None,
                           V_SYM=values.zeros is None, PREFETCH=prefetch and kg == vg == 1, KG=kg, VG=vg,
                           **layouts(keys.bits, keys.dim, block))
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
