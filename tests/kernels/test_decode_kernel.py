"""Decode attention over packed rows equals a float64 reference over the dequantized rows."""

from __future__ import annotations

import pytest
import torch

from kvstack import kernels
from kvstack.errors import InputError
from kvstack.kernels import reference
from kvstack.kernels.layout import Segments


def _expected(q, k, v, seg, tk, tv, tail, query_tokens):
    return reference.decode_attention(
        q.double(), k.double(), v.double(), seg, tk.double(), tv.double(), tail, query_tokens=query_tokens,
        dtype=torch.float64,
    )


def _case(device, bits, key_axis, dtype, query_tokens, lengths, tail_lengths, group=4, dim=64, seed=0, sym=False,
          value_axis="token", scale_group=32):
    g = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.randn(*s, generator=g).to(dtype).to(device)
    seg = Segments.from_lengths(lengths, scale_group, device=device)
    k, v = rand(sum(lengths), dim) * 2, rand(sum(lengths), dim)
    if bits == 16:
        kp, vp, kd, vd = k, v, k, v
    else:
        kp = kernels.quantize(k, bits, scale_group, key_axis, sym, seg)
        vp = kernels.quantize(v, bits, scale_group, value_axis, sym, seg)
        kd = kernels.dequantize(kp, seg, dtype)
        vd = kernels.dequantize(vp, seg, dtype)
    tail = Segments.from_lengths(tail_lengths, device=device)
    tk, tv = rand(sum(tail_lengths), dim), rand(sum(tail_lengths), dim)
    q = rand(len(lengths), group * query_tokens, dim)
    got = kernels.decode_attention(q, kp, vp, seg, tk, tv, tail, query_tokens=query_tokens)
    return got, _expected(q, kd, vd, seg, tk, tv, tail, query_tokens)


@pytest.mark.parametrize("bits,key_axis", [(4, "channel"), (4, "token"), (2, "token"), (2, "channel"), (8, "token"),
                                           (16, "token")])
@pytest.mark.parametrize("query_tokens", [1, 3])
def test_matches_float64_reference_on_ragged_heads(device, bits, key_axis, query_tokens):
    # ragged per-head lengths as selection leaves them, one empty head, tails of different lengths
    got, want = _case(device, bits, key_axis, torch.float16, query_tokens, [300, 7, 0, 64], [5, 3, 4, 3], seed=bits)
    assert got.dtype == torch.float16 and got.shape == want.shape
    err = (got.double().cpu() - want.cpu()).norm() / want.norm()
    assert err < 2e-3, err


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("key_axis,value_axis,scale_group", [("channel", "token", 16), ("token", "channel", 64),
                                                             ("token", "token", 8)])
def test_symmetric_codes_and_other_group_layouts(device, bits, key_axis, value_axis, scale_group):
    got, want = _case(device, bits, key_axis, torch.float16, 1, [70, 0, 33], [1, 2, 1], seed=bits + scale_group,
                      sym=True, value_axis=value_axis, scale_group=scale_group)
    err = (got.double().cpu() - want.cpu()).norm() / want.norm()
    assert err < 2e-3, err


def test_bfloat16_and_large_groups(device):
    if device.type != "cuda":
        pytest.skip("Triton's CPU interpreter computes bfloat16 dot products wrongly; checked on the GPU only")
    got, want = _case(device, 4, "token", torch.bfloat16, 1, [129, 200], [1, 1], group=8, dim=128, seed=5)
    err = (got.double().cpu() - want.cpu()).norm() / want.norm()
    assert err < 1e-2, err


def test_more_rows_than_one_grid_axis_holds(device):
    if device.type != "cuda":
        pytest.skip("70k-row tiles take minutes in the interpreter; the grid limit is a CUDA one")
    x = torch.randn(70_000 * 64, 64, device=device, dtype=torch.float16)
    for axis in ("token", "channel"):
        p = kernels.quantize(x, 4, 16 if axis == "channel" else 32, axis)
        back = kernels.dequantize(p, None, torch.float32)
        assert torch.equal(back, reference.dequantize(p))


def test_one_sequence_split_across_many_programs_merges_exactly(device):
    # one long head split into many slices: the log-sum-exp merge must equal one softmax
    got, want = _case(device, 4, "channel", torch.float16, 1, [1500], [2], seed=9)
    err = (got.double().cpu() - want.cpu()).norm() / want.norm()
    assert err < 2e-3, err


def test_one_program_walking_many_tiles(device):
    # every tile of a long head in one program: the software-pipelined loop over tiles
    # (prefetching the next tile's codes and scales) must stay inside the head
    from kvstack.kernels import triton_decode

    g = torch.Generator().manual_seed(21)
    lengths = [5000, 3000] if device.type == "cuda" else [600, 200]  # the interpreter is slow
    seg = Segments.from_lengths(lengths, 64, device=device)
    k = (torch.randn(sum(lengths), 128, generator=g)).half().to(device)
    v = torch.randn(sum(lengths), 128, generator=g).half().to(device)
    q = torch.randn(2, 8, 128, generator=g).half().to(device)
    for axis in ("channel", "token"):
        kp, vp = kernels.quantize(k, 4, 64, axis, False, seg), kernels.quantize(v, 4, 64, "token", False, seg)
        got = triton_decode.decode_attention(q, kp, vp, seg, target_programs=1)
        kd, vd = kernels.dequantize(kp, seg, torch.float32), kernels.dequantize(vp, seg, torch.float32)
        want = reference.decode_attention(q.double(), kd.double(), vd.double(), seg, dtype=torch.float64)
        assert ((got.double().cpu() - want.cpu()).norm() / want.norm()) < 2e-3


@pytest.mark.parametrize("fuse_tail", [True, False])
def test_tail_read_in_place_per_segment(device, monkeypatch, fuse_tail):
    # a decode cache's tail: [S, t, D] views (a larger buffer's first t rows; a transposed buffer), no table
    from kvstack.kernels import triton_decode

    g = torch.Generator().manual_seed(17)
    rand = lambda *s: torch.randn(*s, generator=g).half().to(device)
    lengths, t, dim = [90, 0, 40], 5, 64
    seg = Segments.from_lengths(lengths, 32, device=device)
    kp = kernels.quantize(rand(130, dim), 4, 32, "channel", False, seg)
    vp = kernels.quantize(rand(130, dim), 4, 32, "token", False, seg)
    tk = rand(3, 16, dim)[:, :t]  # row stride dim, segment stride 16 * dim
    tv = rand(t, 3, dim).transpose(0, 1)  # row stride 3 * dim, segment stride dim
    q = rand(3, 4 * 2, dim)  # 4 query heads, 2 new tokens
    got = triton_decode.decode_attention(q, kp, vp, seg, tk, tv, None, query_tokens=2, fuse_tail=fuse_tail)
    table = Segments.from_lengths([t] * 3, device=device)
    flat = lambda x: x.reshape(3 * t, dim)
    kd, vd = kernels.dequantize(kp, seg, torch.float16), kernels.dequantize(vp, seg, torch.float16)
    want = _expected(q, kd, vd, seg, flat(tk), flat(tv), table, 2)
    assert ((got.double().cpu() - want.cpu()).norm() / want.norm()) < 2e-3
    # the public function takes the same tail, and its reference fallback agrees
    assert torch.equal(kernels.decode_attention(q, kp, vp, seg, tk, tv, query_tokens=2, fuse_tail=fuse_tail), got)
    monkeypatch.setenv("KVSTACK_KERNELS", "0")
    ref = kernels.decode_attention(q, kp, vp, seg, tk, tv, query_tokens=2)
    assert ((ref.double().cpu() - want.cpu()).norm() / want.norm()) < 2e-3


def test_reference_fallback_agrees_with_kernel(device, monkeypatch):
    got, want = _case(device, 4, "token", torch.float16, 1, [90, 33], [2, 2], seed=11)
    monkeypatch.setenv("KVSTACK_KERNELS", "0")
    ref, want_ref = _case(device, 4, "token", torch.float16, 1, [90, 33], [2, 2], seed=11)
    # (torch on CUDA divides by a scalar through its reciprocal, so its codes may differ by one step
    # from the kernel's exact division: each path is checked against its own float64 answer)
    for out, truth in ((got, want), (ref, want_ref)):
        assert ((out.double().cpu() - truth.cpu()).norm() / truth.norm()) < 2e-3
    assert ((got.float() - ref.float()).norm() / ref.float().norm()) < 4e-3


def test_bad_arguments_raise_typed_errors(device):
    seg = Segments.from_lengths([4, 4], device=device)
    k = torch.randn(8, 64, dtype=torch.float16, device=device)
    with pytest.raises(InputError, match="segments=2"):
        kernels.decode_attention(torch.randn(3, 4, 64, dtype=torch.float16, device=device), k, k, seg)
    with pytest.raises(InputError, match="together"):
        kernels.decode_attention(torch.randn(2, 4, 64, dtype=torch.float16, device=device), k, k, seg, tail_k=k)
    with pytest.raises(InputError, match=r"\[segments=2, t, dim\]"):
        kernels.decode_attention(torch.randn(2, 4, 64, dtype=torch.float16, device=device), k, k, seg, k, k)
    with pytest.raises(InputError, match="causally"):
        kernels.decode_attention(torch.randn(2, 8, 64, dtype=torch.float16, device=device), k, k, seg, query_tokens=2)
    with pytest.raises(InputError, match=">= 0"):
        Segments.from_lengths([3, -1])
