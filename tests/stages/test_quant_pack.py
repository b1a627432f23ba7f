"""Bit packing is exact and really dense: every code of every width survives a round trip,
the packed tensor is uint8 of the advertised width, and the byte layout is the documented one."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstack.rows.pack import SUPPORTED_BITS, block_codes, pack_codes, packed_width, unpack_codes


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
def test_every_code_round_trips(bits):
    # all values 0..2^b-1, at every offset inside a block (a cyclic shift per row)
    values = torch.arange(1 << bits, dtype=torch.uint8)
    rows = torch.stack([values.roll(i) for i in range(block_codes(bits) + 1)])
    packed = pack_codes(rows, bits)
    assert packed.dtype == torch.uint8
    assert packed.shape == (rows.shape[0], (1 << bits) * bits // 8)
    assert torch.equal(unpack_codes(packed, bits, rows.shape[1]), rows)


@settings(max_examples=60, deadline=None)
@given(
    bits=st.sampled_from(SUPPORTED_BITS),
    n=st.integers(0, 9),
    d=st.integers(1, 70),
    seed=st.integers(0, 2**31 - 1),
)
def test_random_shapes_round_trip(bits, n, d, seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1 << bits, (n, d), generator=g, dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.shape == (n, packed_width(d, bits))
    assert torch.equal(unpack_codes(packed, bits, d), codes)
    # row-wise packing: packing a subset of rows gives the same bytes as selecting packed rows
    if n:
        rows = torch.arange(n - 1, -1, -2)
        assert torch.equal(pack_codes(codes[rows], bits), packed[rows])


@pytest.mark.parametrize(
    ("bits", "d", "expected"),
    [
        (8, 64, 64),
        (4, 64, 32),  # two codes per byte
        (2, 64, 16),  # four codes per byte
        (3, 64, 24),  # eight codes in three bytes
        (3, 12, 6),  # 12 codes -> two 3-byte blocks (4 padding codes, counted)
        (4, 5, 3),  # odd dim: one padding nibble
        (2, 6, 2),
    ],
)
def test_packed_width(bits, d, expected):
    assert packed_width(d, bits) == expected


def test_byte_layout_little_endian():
    # 4-bit: low nibble first
    assert pack_codes(torch.tensor([[0x1, 0xA]], dtype=torch.uint8), 4).tolist() == [[0xA1]]
    # 2-bit: code i at bits 2i
    assert pack_codes(torch.tensor([[1, 2, 3, 0]], dtype=torch.uint8), 2).tolist() == [[0b00111001]]
    # 3-bit: eight codes as one 24-bit little-endian integer
    codes = [1, 2, 3, 4, 5, 6, 7, 0]
    value = sum(c << (3 * i) for i, c in enumerate(codes))
    packed = pack_codes(torch.tensor([codes], dtype=torch.uint8), 3)
    assert packed.tolist() == [[value & 0xFF, (value >> 8) & 0xFF, value >> 16]]


def test_unsupported_width_is_refused():
    with pytest.raises(ValueError, match="2, 3, 4, 8"):
        pack_codes(torch.zeros(1, 8, dtype=torch.uint8), 5)
    with pytest.raises(ValueError, match="uint8"):
        pack_codes(torch.zeros(1, 8, dtype=torch.int32), 4)
