"""Quantize-and-pack and dequantize kernels equal the PyTorch reference (QuantRows) bit for bit."""

from __future__ import annotations

import pytest
import torch

from kvstack import kernels
from kvstack.errors import InputError
from kvstack.kernels.layout import PackedRows, Segments
from kvstack.rows.quant import QuantRows


def _rows(lengths, dim, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(lengths), dim, generator=g) * torch.rand(1, dim, generator=g) * 4
    x[:, 3] += 7.0  # an outlier channel, as real keys have
    return x.to(dtype).to(device)


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("axis,group", [("token", 32), ("token", 64), ("channel", 16), ("channel", 12)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_quantize_equals_reference_exactly(device, bits, sym, axis, group, dtype):
    lengths = [37, 0, 50, 5]
    x = _rows(lengths, 64, dtype, device, seed=bits * 10 + group)
    segments = Segments.from_lengths(lengths, group if axis == "channel" else 0, device=device)
    assert kernels.uses_kernels(device, 64, bits, group, axis)
    got = kernels.quantize(x, bits, group, axis, sym, segments)
    want = QuantRows.quantize(x.cpu(), bits, group, axis, sym, segments=lengths if axis == "channel" else None)
    assert torch.equal(got.codes.cpu(), want.codes)
    assert torch.equal(got.scales.cpu(), want.scales)
    assert (got.zeros is None) == sym and (sym or torch.equal(got.zeros.cpu(), want.zeros))
    # every element within half a step of its input: the bound the outward-rounded scales promise
    back = kernels.dequantize(got, segments, torch.float32).cpu().double()
    step = want.dequantize().double() - back  # same function: must be exactly zero
    assert step.abs().max() == 0
    s = QuantRows.dequantize  # noqa: F841 (documentation: the reference the bound is taken from)
    scale = (got.scales.float().cpu().repeat_interleave(group, 1) if axis == "token" else None)
    if scale is not None:
        assert ((back - x.cpu().double()).abs() <= scale.double() / 2 * (1 + 1e-3) + 1e-6).all()


@pytest.mark.parametrize("bits", [4, 2])
@pytest.mark.parametrize("block_t,block_d,per,warps", [(64, 64, 1, 1), (16, 64, 3, 1), (32, 16, 2, 2), (8, 32, 1, 4)])
def test_every_channel_kernel_configuration_gives_the_same_bits(device, bits, block_t, block_d, per, warps):
    # tiles shorter than a group (two reads), channel blocks, several groups a program, ragged heads
    from kvstack.kernels import triton_quant

    lengths = [200, 1, 0, 64, 65]
    x = _rows(lengths, 64, torch.bfloat16, device, seed=block_t + block_d)
    segments = Segments.from_lengths(lengths, 64, device=device)
    got = triton_quant.quantize(x, bits, 64, "channel", False, segments, block_t=block_t, block_d=block_d,
                                groups_per_program=per, num_warps=warps)
    want = QuantRows.quantize(x.cpu(), bits, 64, "channel", False, segments=lengths)
    assert torch.equal(got.codes.cpu(), want.codes)
    assert torch.equal(got.scales.cpu(), want.scales) and torch.equal(got.zeros.cpu(), want.zeros)


def test_packed_bytes_are_what_the_format_says(device):
    x = _rows([256], 128, torch.float16, device, seed=1)
    p = kernels.quantize(x, 4, 64)
    assert p.codes.dtype == torch.uint8 and tuple(p.codes.shape) == (256, 64)
    assert p.nbytes == 256 * 64 + 2 * (256 * 2 * 2)  # codes + fp16 scales + fp16 zeros, 2 groups a row


def test_wraps_a_stage_quantized_cache_without_copies(device):
    x = _rows([40], 64, torch.float16, "cpu", seed=2)
    q = QuantRows.quantize(x, 4, 32, "token", False)
    p = PackedRows.from_quant_rows(q)
    assert p.codes.data_ptr() == q.codes.data_ptr()
    assert torch.equal(kernels.dequantize(p, dtype=torch.float32), q.dequantize())
    with pytest.raises(InputError, match="3-bit"):
        PackedRows.from_quant_rows(QuantRows.quantize(x, 3, 32, "token", False))


def test_bad_settings_raise_typed_errors(device):
    x = _rows([8], 64, torch.float16, device, seed=3)
    with pytest.raises(InputError, match="kernel formats"):
        kernels.quantize(x, 3, 32)
    with pytest.raises(InputError, match="divide"):
        kernels.quantize(x, 4, 48)
    with pytest.raises(InputError, match=r"\[rows, dim\]"):
        kernels.quantize(x[0], 4, 32)
