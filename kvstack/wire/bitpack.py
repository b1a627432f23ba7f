"""Numpy unpack/pack of ``kvstack.rows.pack``'s layout, for the entropy coders.

Same bits as ``kvstack.rows.pack`` (code ``i`` of a block at bits ``[b*i, b*i+b)`` of the block read
little-endian; rows padded with zero codes to whole blocks), but byte-wise numpy shifts
instead of int32 tensor arithmetic: several times faster, which matters because the coders
touch every code of the cache. Tests check both directions against ``kvstack.rows.pack``.
"""

from __future__ import annotations

import numpy as np

from kvstack.rows.pack import block_codes, packed_width


def unpack(packed: np.ndarray, bits: int, dim: int) -> np.ndarray:
    """``uint8 [n, packed_width(dim, bits)]`` -> codes ``uint8 [n, dim]``."""
    n = packed.shape[0]
    if bits == 8 or n == 0:
        return np.ascontiguousarray(packed[:, :dim]) if bits == 8 else np.zeros((0, dim), dtype=np.uint8)
    if bits in (2, 4):
        k = 8 // bits
        mask = (1 << bits) - 1
        out = np.empty((n, packed.shape[1], k), dtype=np.uint8)
        for i in range(k):
            np.bitwise_and(packed >> (bits * i), mask, out=out[:, :, i])
        return out.reshape(n, -1)[:, :dim]
    # 3 bits: 8 codes in 3 bytes
    blocks = packed.reshape(n, -1, 3).astype(np.uint32)
    value = blocks[:, :, 0] | (blocks[:, :, 1] << 8) | (blocks[:, :, 2] << 16)
    out = np.empty((n, value.shape[1], 8), dtype=np.uint8)
    for i in range(8):
        out[:, :, i] = (value >> (3 * i)) & 7
    return out.reshape(n, -1)[:, :dim]


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Codes ``uint8 [n, dim]`` (each ``< 2**bits``) -> ``uint8 [n, packed_width(dim, bits)]``."""
    n, dim = codes.shape
    if bits == 8:
        return np.ascontiguousarray(codes)
    if n == 0:
        return np.zeros((0, packed_width(dim, bits)), dtype=np.uint8)
    k = block_codes(bits)
    padded = np.zeros((n, -(-dim // k) * k), dtype=np.uint8)
    padded[:, :dim] = codes
    if bits in (2, 4):
        per = padded.reshape(n, -1, k)
        out = per[:, :, 0].copy()
        for i in range(1, k):
            out |= per[:, :, i] << (bits * i)
        return out
    per = padded.reshape(n, -1, 8).astype(np.uint32)
    value = per[:, :, 0].copy()
    for i in range(1, 8):
        value |= per[:, :, i] << (3 * i)
    out = np.empty((n, value.shape[1], 3), dtype=np.uint8)
    for i in range(3):
        out[:, :, i] = (value >> (8 * i)) & 0xFF
    return out.reshape(n, packed_width(dim, bits))
