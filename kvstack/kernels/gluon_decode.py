"""Decode attention over packed per-token rows with explicit register layouts (Triton's Gluon dialect).

Why a second kernel: the Triton kernel (:mod:`kvstack.kernels.triton_decode`) lets the compiler
choose layouts, and it moves every unpacked tile through shared memory into the tensor-core
operand layout - the wait that kept INT4 decode at ~1.65x of fp16 SDPA. Here the layouts are
written out, so packed bytes go from global memory straight into tensor-core operand registers:

- **Keys.** A key row's bytes run along the product's reduction axis (channels). The matrix
  product does not care in which order channels are summed, so the kernel assigns each
  thread a *contiguous* run of bytes (16 of the 64 in an INT4 row of 128 channels, one
  16-byte load) and reads the query's channels in the matching order. The loaded tile is,
  after a reshape that only renames registers, exactly the ``mma`` B operand.
- **Values.** Each thread loads a contiguous run of a value row's bytes (8 for INT4) and
  the output channels are permuted to match, undone when the partial result is stored; the
  bytes of four tokens are regrouped in registers (the value product reduces over tokens).
- **One warp per program**: its own online softmax, no barrier, no shared memory. Slices of
  rows ("split-K", flash-decoding) fill the GPU; the Triton merge kernel combines them.

Scope (:func:`supported`): per-token groups spanning the whole row for keys and values
(``kt128 v128`` for head_dim 128, one scale and zero per row), 4 or 8 bits, head_dim 64 or 128, up to
16 query rows per KV head. Everything else goes to the Triton kernel, which also reads the dense tail.
"""

from __future__ import annotations

import functools

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import mma_v2

from kvstack.kernels.layout import PackedRows
from kvstack.kernels.unpack_asm import PAIR_ASM_4, PAIR_ASM_8, UNPACK_ASM_4, UNPACK_ASM_8

ROWS = 16  # query rows of one product (mma m16)


def supported(keys: PackedRows | torch.Tensor, values: PackedRows | torch.Tensor, rows: int) -> bool:
    """Whether this kernel reads these rows: packed per-token whole-row groups, 4/8 bits, CUDA, <= 16 rows."""
    def ok(x) -> bool:  # 16-byte loads of codes; head_dim 256 would need 256 accumulator registers a lane
        return (isinstance(x, PackedRows) and x.codes.is_cuda and x.axis == "token" and x.group == x.dim
                and x.bits in (4, 8) and x.dim in (64, 128) and x.codes.data_ptr() % 16 == 0)
    return ok(keys) and ok(values) and keys.bits == values.bits and keys.dim == values.dim and rows <= ROWS


def _bits(n: int) -> list[int]:
    return [1 << i for i in range(n.bit_length() - 1)]


@functools.lru_cache(maxsize=64)
def layouts(bits: int, dim: int, block: int) -> dict:
    """The constexpr layouts and reshapes of one (bits, head_dim, tile) configuration.

    ``KLOAD`` gives lane ``4g + t`` bytes ``[t*w, (t+1)*w)`` of token row ``g (+8r)`` (``w`` =
    a quarter row, memory order in registers); reshaping ``[tokens, 2, 2, w/2, 2]`` and permuting
    turns byte ``t*w + 2j' + j0`` into reduction index ``8j' + 2t + j0``: the B operand layout.
    ``VLOAD`` gives lane ``4g + t`` 32-bit words ``[g*u, (g+1)*u)`` (``u`` = an eighth of a row) of
    tokens ``2t, 2t+1, 2t+8, 2t+9 (+16r)``, the B operand's tokens, in memory order; ``VPAIR`` is the
    same registers with tokens ``2i, 2i+1`` adjacent (a renaming: whole 32-bit registers), which
    the pair unpacking reads. Word ``g*u + j`` becomes column ``8j + g``.
    """
    dp = dim * bits // 8  # bytes per row
    kw, vw = dp // 4, dp // 32  # key bytes, value words (4 bytes) per lane and token
    mma = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, 1], instr_shape=[16, 8])
    kload = gl.DistributedLinearLayout(
        reg_bases=[[0, b] for b in _bits(kw)] + [[8 * b, 0] for b in _bits(block // 8)],
        lane_bases=[[0, kw], [0, 2 * kw], [1, 0], [2, 0], [4, 0]], warp_bases=[], block_bases=[], shape=[block, dp])
    lanes = [[2, 0], [4, 0], [0, vw], [0, 2 * vw], [0, 4 * vw]]
    words = [[0, b] for b in _bits(vw)]
    tokens = [[8 * b, 0] for b in _bits(block // 8)]
    vload = gl.DistributedLinearLayout(reg_bases=words + [[1, 0]] + tokens, lane_bases=lanes, warp_bases=[],
                                       block_bases=[], shape=[block, dp // 4])
    vpair = gl.DistributedLinearLayout(reg_bases=[[1, 0]] + words + tokens, lane_bases=lanes, warp_bases=[],
                                       block_bases=[], shape=[block, dp // 4])
    tpt = block // 4  # tokens per lane
    sload = gl.DistributedLinearLayout(reg_bases=[[0, b] for b in _bits(tpt)], lane_bases=[[1, 0], [2, 0], [0, 0],
                                       [0, 0], [0, 0]], warp_bases=[], block_bases=[], shape=[4, tpt])
    return dict(MMA=mma, KLOAD=kload, VLOAD=vload, VPAIR=vpair, SLOAD=sload)


@gluon.jit
def _codes(b, BITS: gl.constexpr):
    """Exact float16 codes of a byte tile in the B operand layout: (low, high) nibbles, or the bytes at 8 bits."""
    if BITS == 8:
        c0 = gl.inline_asm_elementwise(UNPACK_ASM_8, "=r,=r,r", [b], dtype=gl.float16, is_pure=True, pack=4)
        c1 = c0
    else:
        c0, c1 = gl.inline_asm_elementwise(UNPACK_ASM_4, "=r,=r,=r,=r,r", [b], dtype=(gl.float16, gl.float16),
                                           is_pure=True, pack=4)
    return c0, c1


@gluon.jit
def _value_operand(x, BLOCK: gl.constexpr, DW: gl.constexpr, B_OP: gl.constexpr):
    """A pair-unpacked value tile as the B operand: word ``g*u + j`` to column ``8j + g`` (register renaming)."""
    x = gl.reshape(gl.permute(gl.reshape(x, [BLOCK, 8, DW // 8]), [0, 2, 1]), [BLOCK, DW])
    return gl.convert_layout(x, B_OP)


@gluon.jit
def _token_order(n, BLOCK: gl.constexpr):
    """Row (within a tile) of column ``n``: lane ``t``'s columns ``2t, 2t+1, 2t+8, ..`` are rows ``t*BLOCK/4 ..``.

    A product does not care in which order it meets the tokens, so the kernel numbers them such
    that each lane's columns of the scores are one contiguous run of rows: its scales and zero
    points are then one vector load (``_scale_tile``), not one load each.
    """
    return (BLOCK // 4) * ((n >> 1) & 3) + (n & 1) + 2 * (n >> 3)


@gluon.jit
def _scale_tile(PTR, b, r_lo, r_hi, BLOCK: gl.constexpr, SLOAD: gl.constexpr, COL: gl.constexpr):
    """Per-row scales of rows ``b ..`` (8-aligned) as the scores' columns; rows outside ``[r_lo, r_hi)`` read 0."""
    TPT: gl.constexpr = BLOCK // 4
    t = gl.arange(0, 4, layout=gl.SliceLayout(1, SLOAD))
    j = gl.arange(0, TPT, layout=gl.SliceLayout(0, SLOAD))
    rows = b + t[:, None] * TPT + j[None, :]
    if (b >= r_lo) & (b + BLOCK <= r_hi):  # whole tile inside: vector loads need no per-row mask
        x = gl.load(PTR + rows)
    else:
        x = gl.load(PTR + rows, mask=(rows >= r_lo) & (rows < r_hi), other=0.0)
    x = gl.reshape(gl.permute(gl.reshape(x, [2, 2, TPT // 2, 2]), [2, 0, 1, 3]), [BLOCK])
    return gl.convert_layout(x, COL, assert_trivial=True)


@gluon.jit
def _tile_loads(K, KS, KZ, V, VS, VZ, b, r_lo, r_hi, ktok, kbyte, vtok, vword, DP: gl.constexpr, DW: gl.constexpr,
                BLOCK: gl.constexpr, K_SYM: gl.constexpr, V_SYM: gl.constexpr, SLOAD: gl.constexpr,
                COL: gl.constexpr):
    """Everything one tile reads from memory: key bytes, value words, scales and zeros (rows outside: zeros)."""
    rk = b + ktok
    kb = gl.load(K + rk[:, None] * DP + kbyte[None, :], mask=((rk >= r_lo) & (rk < r_hi))[:, None], other=0)
    rv = b + vtok
    w = gl.load(V + rv[:, None] * DW + vword[None, :], mask=((rv >= r_lo) & (rv < r_hi))[:, None], other=0)
    ks = _scale_tile(KS, b, r_lo, r_hi, BLOCK, SLOAD, COL)
    kz = ks
    if not K_SYM:
        kz = _scale_tile(KZ, b, r_lo, r_hi, BLOCK, SLOAD, COL)
    vs = _scale_tile(VS, b, r_lo, r_hi, BLOCK, SLOAD, COL)
    vz = vs
    if not V_SYM:
        vz = _scale_tile(VZ, b, r_lo, r_hi, BLOCK, SLOAD, COL)
    return kb, w, ks, kz, vs, vz


@gluon.jit
def _packed_split_kernel(
    Q, K, KS, KZ, V, VS, VZ, STARTS, LENS, WORK, l_off, qk_scale, chunk, splits_total,
    M: gl.constexpr, D: gl.constexpr, BITS: gl.constexpr, BLOCK: gl.constexpr, K_SYM: gl.constexpr,
    V_SYM: gl.constexpr, MMA: gl.constexpr, KLOAD: gl.constexpr, VLOAD: gl.constexpr, VPAIR: gl.constexpr,
    SLOAD: gl.constexpr, PREFETCH: gl.constexpr,
):
    """One warp: segment ``program_id(0)``'s query rows over its rows ``[lo, hi)``; partials to the workspace."""
    P: gl.constexpr = 8 // BITS
    DP: gl.constexpr = D // P
    KW: gl.constexpr = DP // 4
    DW: gl.constexpr = DP // 4  # value words per row
    CW: gl.constexpr = 32 // BITS  # channels per word
    HALF: gl.constexpr = 1 << (BITS - 1)
    A_OP: gl.constexpr = gl.DotOperandLayout(0, MMA, 2)
    B_OP: gl.constexpr = gl.DotOperandLayout(1, MMA, 2)
    ROW: gl.constexpr = gl.SliceLayout(1, MMA)
    COL: gl.constexpr = gl.SliceLayout(0, MMA)

    seg = gl.program_id(0)
    split = gl.program_id(1)
    slot = seg * splits_total + split
    start = gl.load(STARTS + seg)
    n = gl.load(LENS + seg)
    lo = split * chunk
    hi = gl.minimum(lo + chunk, n)

    # the query, its channels in the keys' byte order: reduction index k holds byte 16t + 2j' + j0 (KW = 16)
    qm = gl.arange(0, 16, layout=gl.SliceLayout(1, A_OP))
    qk = gl.arange(0, DP, layout=gl.SliceLayout(0, A_OP))
    qbyte = ((qk >> 1) & 3) * KW + (qk & 1) + 2 * (qk >> 3)
    qptr = Q + (seg * M + qm[:, None]) * D + P * qbyte[None, :]
    qmask = qm[:, None] < M
    q0 = gl.load(qptr, mask=qmask, other=0.0).to(gl.float32) * qk_scale
    qsum = gl.sum(q0, 1)
    q1 = q0
    if P > 1:
        q1 = gl.load(qptr + 1, mask=qmask, other=0.0).to(gl.float32) * qk_scale
        qsum += gl.sum(q1, 1)
    qsum = gl.convert_layout(qsum, ROW)
    q0h = q0.to(gl.float16)
    q1h = q1.to(gl.float16)

    m_i = gl.full([16], float("-inf"), gl.float32, ROW)
    l_i = gl.zeros([16], gl.float32, ROW)
    vbias = gl.zeros([16], gl.float32, ROW)
    acc0 = gl.zeros([16, DW], gl.float32, MMA)
    acc1 = acc0
    acc2 = acc0
    acc3 = acc0
    acc4 = acc0
    acc5 = acc0
    acc6 = acc0
    acc7 = acc0

    ktok = _token_order(gl.arange(0, BLOCK, layout=gl.SliceLayout(1, KLOAD)), BLOCK)
    kbyte = gl.arange(0, DP, layout=gl.SliceLayout(0, KLOAD))
    vtok = _token_order(gl.arange(0, BLOCK, layout=gl.SliceLayout(1, VLOAD)), BLOCK)
    vword = gl.arange(0, DW, layout=gl.SliceLayout(0, VLOAD))
    cols = _token_order(gl.arange(0, BLOCK, layout=COL), BLOCK)
    r_lo = start + lo
    r_hi = start + hi
    first = (r_lo // 8) * 8  # tiles start on 8-row boundaries: aligned scale loads
    if PREFETCH:  # the next tile's loads go out before this tile's arithmetic
        kb, w, ks, kz, vs, vz = _tile_loads(K, KS, KZ, V, VS, VZ, first, r_lo, r_hi, ktok, kbyte, vtok, vword, DP, DW,
                                            BLOCK, K_SYM, V_SYM, SLOAD, COL)
    for b in range(first, r_hi, BLOCK):
        b = gl.multiple_of(b, 8)
        if PREFETCH:
            nkb, nw, nks, nkz, nvs, nvz = _tile_loads(K, KS, KZ, V, VS, VZ, b + BLOCK, r_lo, r_hi, ktok, kbyte, vtok,
                                                      vword, DP, DW, BLOCK, K_SYM, V_SYM, SLOAD, COL)
        else:
            kb, w, ks, kz, vs, vz = _tile_loads(K, KS, KZ, V, VS, VZ, b, r_lo, r_hi, ktok, kbyte, vtok, vword, DP, DW,
                                                BLOCK, K_SYM, V_SYM, SLOAD, COL)
        kop = gl.reshape(gl.permute(gl.reshape(kb, [BLOCK, 2, 2, KW // 2, 2]), [3, 1, 2, 4, 0]), [DP, BLOCK])
        c0, c1 = _codes(gl.convert_layout(kop, B_OP, assert_trivial=True), BITS)
        s = mma_v2(q0h, c0, gl.zeros([16, BLOCK], gl.float32, MMA))
        if P > 1:
            s = mma_v2(q1h, c1, s)
        rc = b + cols
        valid = (rc >= r_lo) & (rc < r_hi)
        if K_SYM:
            s = (s - HALF * qsum[:, None]) * ks.to(gl.float32)[None, :]
        else:
            s = s * ks.to(gl.float32)[None, :] + qsum[:, None] * kz.to(gl.float32)[None, :]
        s = gl.where(valid[None, :], s, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(s, 1))
        m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)
        p = gl.exp2(s - m_safe[:, None])
        alpha = gl.exp2(m_i - m_safe)
        l_i = l_i * alpha + gl.sum(p, 1)
        m_i = m_new

        ps = p * vs.to(gl.float32)[None, :]
        if V_SYM:
            vbias = vbias * alpha - HALF * gl.sum(ps, 1)
        else:
            vbias = vbias * alpha + gl.sum(p * vz.to(gl.float32)[None, :], 1)
        pa = gl.convert_layout(ps.to(gl.float16), A_OP)
        wp = gl.convert_layout(w, VPAIR)
        # each tile's product starts from zero and is added in float32 (one FFMA with the rescale): the tensor
        # cores' accumulation truncates, and a long slice's sum, mostly cancelled by the zero points,
        # drifted to 1e-2 relative error when the products accumulated in place
        zero = gl.zeros([16, DW], gl.float32, MMA)
        if BITS == 4:
            v0, v1, v2, v3, v4, v5, v6, v7 = gl.inline_asm_elementwise(
                PAIR_ASM_4, "=r,=r,=r,=r,=r,=r,=r,=r,r,r", [wp],
                dtype=(gl.float16, gl.float16, gl.float16, gl.float16, gl.float16, gl.float16, gl.float16,
                       gl.float16), is_pure=True, pack=2)
            acc4 = acc4 * alpha[:, None] + mma_v2(pa, _value_operand(v4, BLOCK, DW, B_OP), zero)
            acc5 = acc5 * alpha[:, None] + mma_v2(pa, _value_operand(v5, BLOCK, DW, B_OP), zero)
            acc6 = acc6 * alpha[:, None] + mma_v2(pa, _value_operand(v6, BLOCK, DW, B_OP), zero)
            acc7 = acc7 * alpha[:, None] + mma_v2(pa, _value_operand(v7, BLOCK, DW, B_OP), zero)
        else:
            v0, v1, v2, v3 = gl.inline_asm_elementwise(
                PAIR_ASM_8, "=r,=r,=r,=r,r,r", [wp], dtype=(gl.float16, gl.float16, gl.float16, gl.float16),
                is_pure=True, pack=2)
        acc0 = acc0 * alpha[:, None] + mma_v2(pa, _value_operand(v0, BLOCK, DW, B_OP), zero)
        acc1 = acc1 * alpha[:, None] + mma_v2(pa, _value_operand(v1, BLOCK, DW, B_OP), zero)
        acc2 = acc2 * alpha[:, None] + mma_v2(pa, _value_operand(v2, BLOCK, DW, B_OP), zero)
        acc3 = acc3 * alpha[:, None] + mma_v2(pa, _value_operand(v3, BLOCK, DW, B_OP), zero)
        if PREFETCH:
            kb, w, ks, kz, vs, vz = nkb, nw, nks, nkz, nvs, nvz

    has = l_i > 0.0
    inv = 1.0 / gl.where(has, l_i, 1.0)
    lse = gl.where(has, m_i + gl.log2(gl.where(has, l_i, 1.0)), float("-inf"))
    om = gl.arange(0, 16, layout=ROW)
    on = gl.arange(0, DW, layout=COL)
    ochan = CW * ((on % 8) * (DW // 8) + on // 8)  # column 8j + g holds value word g*u + j
    optr = WORK + (slot * 16 + om[:, None]) * D + ochan[None, :]
    omask = om[:, None] < M
    bias = vbias[:, None]
    gl.store(optr, (acc0 + bias) * inv[:, None], mask=omask)
    gl.store(optr + 1, (acc1 + bias) * inv[:, None], mask=omask)
    gl.store(optr + 2, (acc2 + bias) * inv[:, None], mask=omask)
    gl.store(optr + 3, (acc3 + bias) * inv[:, None], mask=omask)
    if BITS == 4:
        gl.store(optr + 4, (acc4 + bias) * inv[:, None], mask=omask)
        gl.store(optr + 5, (acc5 + bias) * inv[:, None], mask=omask)
        gl.store(optr + 6, (acc6 + bias) * inv[:, None], mask=omask)
        gl.store(optr + 7, (acc7 + bias) * inv[:, None], mask=omask)
    gl.store(WORK + l_off + slot * 16 + om, lse)


def launch(
    q: torch.Tensor, keys: PackedRows, values: PackedRows, starts: torch.Tensor, lengths: torch.Tensor,
    work: torch.Tensor, l_off: int, qk_scale: float, chunk: int, splits: int, splits_total: int, block: int,
    prefetch: bool = False,
) -> None:
    """Slices ``0 .. splits`` of every segment into ``work`` (the Triton kernel's workspace layout, 16 rows)."""
    S, M, D = q.shape
    z = lambda x: x.zeros if x.zeros is not None else x.scales  # noqa: E731
    _packed_split_kernel[(S, splits)](
        q, keys.codes, keys.scales, z(keys), values.codes.view(torch.int32), values.scales, z(values), starts, lengths,
        work,
        l_off, qk_scale, chunk, splits_total, M=M, D=D, BITS=keys.bits, BLOCK=block, K_SYM=keys.zeros is None,
        V_SYM=values.zeros is None, PREFETCH=prefetch, num_warps=1, **layouts(keys.bits, D, block))
