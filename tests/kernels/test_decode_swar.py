"""The SWAR unpacking (codes two per 32-bit instruction, by inline PTX) gives the portable path's answer.

On CUDA the decode kernel unpacks codes with ``prmt``/``lop3``/``f16x2`` instructions on four
bytes at once; the result must be exact codes, so both unpackings equal the float64 reference
over the dequantized rows for every code width, axis, symmetry and group, and equal each other.
"""

from __future__ import annotations

import pytest
import torch

from kvstack import kernels
from kvstack.errors import InputError
from kvstack.kernels import reference, triton_decode
from kvstack.kernels.layout import PackedRows, Segments

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="inline PTX runs on CUDA only")


def _packed(device, bits, axis, sym, dim, lengths, group, gen):
    seg = Segments.from_lengths(lengths, group, device=device)
    k = (torch.randn(sum(lengths), dim, generator=gen) * 3).half().to(device)
    v = torch.randn(sum(lengths), dim, generator=gen).half().to(device)
    kp = kernels.quantize(k, bits, group, axis, sym, seg)
    vp = kernels.quantize(v, bits, group, "token", sym, seg)
    return seg, kp, vp


@needs_cuda
@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("axis,sym", [("token", False), ("channel", False), ("token", True)])
@pytest.mark.parametrize("dim,group", [(128, 128), (128, 64), (64, 32)])
def test_swar_and_portable_unpacking_both_match_float64(bits, axis, sym, dim, group):
    gen = torch.Generator().manual_seed(bits * 100 + dim + group)
    lengths = [1000, 77, 0, 513]
    seg, kp, vp = _packed("cuda", bits, axis, sym, dim, lengths, group, gen)
    assert triton_decode.swar_ok(kp) and triton_decode.swar_ok(vp)
    q = torch.randn(len(lengths), 8, dim, generator=gen).half().cuda()
    kd, vd = kernels.dequantize(kp, seg, torch.float64), kernels.dequantize(vp, seg, torch.float64)
    want = reference.decode_attention(q.double(), kd, vd, seg, dtype=torch.float64).cpu()
    got = {swar: triton_decode.decode_attention(q, kp, vp, seg, swar=swar).double().cpu() for swar in (True, False)}
    for swar, out in got.items():
        err = ((out - want).norm() / want.norm()).item()
        assert err < 2e-3, (swar, err)
    assert ((got[True] - got[False]).norm() / want.norm()).item() < 1e-3  # same codes, same products


def test_swar_needs_aligned_cuda_codes():
    # CPU codes (the interpreter) never take the inline assembly, and asking for it is a typed error
    codes = torch.zeros(8, 32, dtype=torch.uint8)
    rows = PackedRows(codes, torch.ones(8, 1, dtype=torch.float16), None, 4, 64, "token", 64)
    assert not triton_decode.swar_ok(rows)
    assert triton_decode.swar_ok(torch.zeros(8, 64))  # dense rows have nothing to unpack
    seg = Segments.from_lengths([8])
    with pytest.raises(InputError, match="swar=True"):
        triton_decode.DecodePlan(rows, rows, seg, swar=True)


@needs_cuda
def test_unaligned_codes_unpack_the_same():
    # codes 1 byte past an aligned allocation: loads are no longer vectorized, the answer must not change
    gen = torch.Generator().manual_seed(5)
    seg, kp, vp = _packed("cuda", 4, "token", False, 128, [200], 128, gen)
    buf = torch.zeros(kp.codes.numel() + 1, dtype=torch.uint8, device="cuda")
    view = buf[1:].view(kp.codes.shape)
    view.copy_(kp.codes)
    odd = PackedRows(view, kp.scales, kp.zeros, kp.bits, kp.group, kp.axis, kp.dim)
    q = torch.randn(1, 8, 128, generator=gen).half().cuda()
    want = triton_decode.decode_attention(q, kp, vp, seg, swar=False)
    for swar in (True, False):
        torch.testing.assert_close(triton_decode.decode_attention(q, odd, vp, seg, swar=swar), want,
                                   rtol=2e-3, atol=2e-3)
