"""Bit packing: ``b``-bit integer codes stored densely in ``uint8`` tensors, row by row.

Codes are packed in *blocks*: the fewest codes whose bits fill whole bytes (two 4-bit
codes in one byte, four 2-bit codes in one byte, eight 3-bit codes in three bytes, one
8-bit code per byte). Within a block, code ``i`` occupies bits ``[b*i, b*i + b)`` of the
block read as a little-endian integer. Each row is packed on its own, so rows can be
selected (evicted) without unpacking. A row whose length is not a whole number of blocks
is padded with zero codes; the padding bytes are really allocated and so are counted.
"""

from __future__ import annotations

import math

import torch

SUPPORTED_BITS = (2, 3, 4, 8)


def block_codes(bits: int) -> int:
    """Codes per block: the smallest count whose ``bits`` fill whole bytes."""
    return 8 // math.gcd(bits, 8)


def packed_width(dim: int, bits: int) -> int:
    """Bytes one packed row of ``dim`` codes takes (padding to whole blocks included)."""
    k = block_codes(bits)
    return -(-dim // k) * k * bits // 8


def _check_bits(bits: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"{bits}-bit codes are not supported; bit widths: {SUPPORTED_BITS}")


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack ``uint8 [n, d]`` codes (each ``< 2**bits``) into ``uint8 [n, packed_width(d, bits)]``."""
    _check_bits(bits)
    if codes.dtype != torch.uint8 or codes.dim() != 2:
        raise ValueError(f"pack_codes needs a 2-D uint8 tensor, got {codes.dtype} {tuple(codes.shape)}")
    if bits == 8:
        return codes.contiguous()
    n, d = codes.shape
    k, nb = block_codes(bits), block_codes(bits) * bits // 8
    blocks = -(-d // k)
    c = torch.nn.functional.pad(codes, (0, blocks * k - d)) if blocks * k != d else codes
    shifts = torch.arange(k, device=codes.device, dtype=torch.int32) * bits
    value = (c.reshape(n, blocks, k).to(torch.int32) << shifts).sum(-1, dtype=torch.int32)
    byte_shifts = torch.arange(nb, device=codes.device, dtype=torch.int32) * 8
    return ((value.unsqueeze(-1) >> byte_shifts) & 0xFF).to(torch.uint8).reshape(n, blocks * nb)


def unpack_codes(packed: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: ``uint8 [n, packed_width(dim, bits)]`` -> ``uint8 [n, dim]``."""
    _check_bits(bits)
    if bits == 8:
        return packed
    n = packed.shape[0]
    k, nb = block_codes(bits), block_codes(bits) * bits // 8
    blocks = packed.shape[1] // nb
    byte_shifts = torch.arange(nb, device=packed.device, dtype=torch.int32) * 8
    value = (packed.reshape(n, blocks, nb).to(torch.int32) << byte_shifts).sum(-1, dtype=torch.int32)
    shifts = torch.arange(k, device=packed.device, dtype=torch.int32) * bits
    codes = (value.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    return codes.reshape(n, blocks * k)[:, :dim].to(torch.uint8)
