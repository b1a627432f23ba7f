"""Inline PTX that unpacks four packed bytes into exact float16 codes, two codes per instruction.

Shared by the Triton decode kernel (``_swar_codes`` in triton_decode.py) and the Gluon one
(gluon_decode.py). A ``prmt`` spreads bytes 0, 1 (and 2, 3) into the halves of a register, a
``lop3`` per phase keeps that phase's bits and ORs ``0x6400`` into both halves (two float16
``1024 + 2**(BITS*i) * code``), and one ``sub``/``fma.f16x2`` removes the offset and the power of
two exactly. Output element ``k`` depends on input byte ``k`` only (``pack=4``: truly elementwise).
Wrapped in ``constexpr`` because a kernel may read only constexpr globals.
"""

import triton.language as tl

UNPACK_ASM_8 = tl.constexpr(
    "{ .reg .b32 m; mov.b32 m, 0x64006400; prmt.b32 $0, $2, 0x64, 0x4140; prmt.b32 $1, $2, 0x64, 0x4342; "
    "sub.f16x2 $0, $0, m; sub.f16x2 $1, $1, m; }"
)
UNPACK_ASM_4 = tl.constexpr(
    "{ .reg .b32 lo, hi, m, s, z; mov.b32 m, 0x64006400; mov.b32 s, 0x2C002C00; mov.b32 z, 0xD400D400; "
    "prmt.b32 lo, $4, 0, 0x4140; prmt.b32 hi, $4, 0, 0x4342; "
    "lop3.b32 $0, lo, 0x000F000F, 0x64006400, 0xea; lop3.b32 $1, hi, 0x000F000F, 0x64006400, 0xea; "
    "lop3.b32 $2, lo, 0x00F000F0, 0x64006400, 0xea; lop3.b32 $3, hi, 0x00F000F0, 0x64006400, 0xea; "
    "sub.f16x2 $0, $0, m; sub.f16x2 $1, $1, m; fma.rn.f16x2 $2, $2, s, z; fma.rn.f16x2 $3, $3, s, z; }"
)
UNPACK_ASM_2 = tl.constexpr(
    "{ .reg .b32 lo, hi, m, s1, z1, s2, z2, s3, z3; mov.b32 m, 0x64006400; "
    "mov.b32 s1, 0x34003400; mov.b32 z1, 0xDC00DC00; mov.b32 s2, 0x2C002C00; mov.b32 z2, 0xD400D400; "
    "mov.b32 s3, 0x24002400; mov.b32 z3, 0xCC00CC00; "
    "prmt.b32 lo, $8, 0, 0x4140; prmt.b32 hi, $8, 0, 0x4342; "
    "lop3.b32 $0, lo, 0x00030003, 0x64006400, 0xea; lop3.b32 $1, hi, 0x00030003, 0x64006400, 0xea; "
    "lop3.b32 $2, lo, 0x000C000C, 0x64006400, 0xea; lop3.b32 $3, hi, 0x000C000C, 0x64006400, 0xea; "
    "lop3.b32 $4, lo, 0x00300030, 0x64006400, 0xea; lop3.b32 $5, hi, 0x00300030, 0x64006400, 0xea; "
    "lop3.b32 $6, lo, 0x00C000C0, 0x64006400, 0xea; lop3.b32 $7, hi, 0x00C000C0, 0x64006400, 0xea; "
    "sub.f16x2 $0, $0, m; sub.f16x2 $1, $1, m; fma.rn.f16x2 $2, $2, s1, z1; fma.rn.f16x2 $3, $3, s1, z1; "
    "fma.rn.f16x2 $4, $4, s2, z2; fma.rn.f16x2 $5, $5, s2, z2; "
    "fma.rn.f16x2 $6, $6, s3, z3; fma.rn.f16x2 $7, $7, s3, z3; }"
)

# Two 32-bit words of two *tokens* (pack=2: element k, then k + 1) into float16 pairs (token k, k + 1) of one
# channel each - the value operand of a product that reduces over tokens. Output j holds channel j of the
# word (4 bits: byte j // 2, low nibble first; 8 bits: byte j). A ``prmt`` pairs byte i of the two words.
PAIR_ASM_4 = tl.constexpr(
    "{ .reg .b32 t0, t1, t2, t3, m, s, z; mov.b32 m, 0x64006400; mov.b32 s, 0x2C002C00; mov.b32 z, 0xD400D400; "
    "prmt.b32 t0, $8, $9, 0x4400; prmt.b32 t1, $8, $9, 0x5511; prmt.b32 t2, $8, $9, 0x6622; "
    "prmt.b32 t3, $8, $9, 0x7733; "
    "lop3.b32 $0, t0, 0x000F000F, 0x64006400, 0xea; lop3.b32 $1, t0, 0x00F000F0, 0x64006400, 0xea; "
    "lop3.b32 $2, t1, 0x000F000F, 0x64006400, 0xea; lop3.b32 $3, t1, 0x00F000F0, 0x64006400, 0xea; "
    "lop3.b32 $4, t2, 0x000F000F, 0x64006400, 0xea; lop3.b32 $5, t2, 0x00F000F0, 0x64006400, 0xea; "
    "lop3.b32 $6, t3, 0x000F000F, 0x64006400, 0xea; lop3.b32 $7, t3, 0x00F000F0, 0x64006400, 0xea; "
    "sub.f16x2 $0, $0, m; fma.rn.f16x2 $1, $1, s, z; sub.f16x2 $2, $2, m; fma.rn.f16x2 $3, $3, s, z; "
    "sub.f16x2 $4, $4, m; fma.rn.f16x2 $5, $5, s, z; sub.f16x2 $6, $6, m; fma.rn.f16x2 $7, $7, s, z; }"
)
PAIR_ASM_8 = tl.constexpr(
    "{ .reg .b32 u, w, m; mov.b32 m, 0x64006400; "
    "prmt.b32 u, $4, $5, 0x5140; prmt.b32 w, $4, $5, 0x7362; "
    "prmt.b32 $0, u, 0x64, 0x4140; prmt.b32 $1, u, 0x64, 0x4342; "
    "prmt.b32 $2, w, 0x64, 0x4140; prmt.b32 $3, w, 0x64, 0x4342; "
    "sub.f16x2 $0, $0, m; sub.f16x2 $1, $1, m; sub.f16x2 $2, $2, m; sub.f16x2 $3, $3, m; }"
)


# Pairs as above, but the offset stays in: float16 ``64 + code`` at 4 bits (each nibble ORed into bits 4-7
# of 64.0, whose mantissa counts sixteenths) and ``1024 + code`` at 8 bits. A product whose accumulator
# starts at ``-offset * sum(other operand, as float16)`` cancels it inside the tensor cores. An offset
# near the codes' scale keeps that cancellation exact to float32 rounding: 1024 against 4-bit codes
# (a mean of 7.5) lost 2-6e-3 relative error; 64 loses nothing measurable. Two instructions per code pair
# fewer than subtracting in the unpacking.
OFFSET_PAIR_ASM_4 = tl.constexpr(
    "{ .reg .b32 t0, t1, t2, t3, u0, u1, u2, u3; "
    "prmt.b32 t0, $8, $9, 0x4400; prmt.b32 t1, $8, $9, 0x5511; prmt.b32 t2, $8, $9, 0x6622; "
    "prmt.b32 t3, $8, $9, 0x7733; shl.b32 u0, t0, 4; shl.b32 u1, t1, 4; shl.b32 u2, t2, 4; shl.b32 u3, t3, 4; "
    "lop3.b32 $0, u0, 0x00F000F0, 0x54005400, 0xea; lop3.b32 $1, t0, 0x00F000F0, 0x54005400, 0xea; "
    "lop3.b32 $2, u1, 0x00F000F0, 0x54005400, 0xea; lop3.b32 $3, t1, 0x00F000F0, 0x54005400, 0xea; "
    "lop3.b32 $4, u2, 0x00F000F0, 0x54005400, 0xea; lop3.b32 $5, t2, 0x00F000F0, 0x54005400, 0xea; "
    "lop3.b32 $6, u3, 0x00F000F0, 0x54005400, 0xea; lop3.b32 $7, t3, 0x00F000F0, 0x54005400, 0xea; }"
)
OFFSET_PAIR_ASM_8 = tl.constexpr(
    "{ .reg .b32 u, w; prmt.b32 u, $4, $5, 0x5140; prmt.b32 w, $4, $5, 0x7362; "
    "prmt.b32 $0, u, 0x64, 0x4140; prmt.b32 $1, u, 0x64, 0x4342; "
    "prmt.b32 $2, w, 0x64, 0x4140; prmt.b32 $3, w, 0x64, 0x4342; }"
)
