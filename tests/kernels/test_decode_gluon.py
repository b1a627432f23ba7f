"""The Gluon decode kernel (explicit register layouts) gives the float64 answer, and is chosen only where it can run.

It reads packed bytes straight into tensor-core operands in a permuted channel order (keys)
and writes output channels back in order (values); any slip in those permutations shows as a
large error against the reference over the dequantized rows, so each case compares with
float64 and with the Triton kernel on the same codes.
"""

from __future__ import annotations

import pytest
import torch

from kvstack import kernels
from kvstack.errors import InputError
from kvstack.kernels import gluon_decode, reference, triton_decode
from kvstack.kernels.layout import PackedRows, Segments

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="the Gluon kernel runs on CUDA only")


def _packed(bits: int, sym: bool, dim: int, lengths: list[int], gen: torch.Generator, device: str = "cuda",
            kgroup: int | None = None, vgroup: int | None = None):
    seg = Segments.from_lengths(lengths, 0, device=device)
    k = (torch.randn(sum(lengths), dim, generator=gen) * 3 + torch.randn(dim, generator=gen)).half().to(device)
    v = torch.randn(sum(lengths), dim, generator=gen).half().to(device)
    return (seg, kernels.quantize(k, bits, kgroup or dim, "token", sym, seg),
            kernels.quantize(v, bits, vgroup or dim, "token", sym, seg))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double().cpu() - b.double().cpu()).norm() / b.double().cpu().norm()).item()


@needs_cuda
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("dim", [64, 128])
@pytest.mark.parametrize("rows", [1, 8, 16])
def test_gluon_matches_float64_and_the_triton_kernel(bits, sym, dim, rows):
    gen = torch.Generator().manual_seed(bits * 1000 + dim + rows + sym)
    lengths = [1000, 77, 0, 513, 31, 4096]  # ragged, empty, shorter than a tile, several slices
    seg, kp, vp = _packed(bits, sym, dim, lengths, gen)
    q = torch.randn(len(lengths), rows, dim, generator=gen).half().cuda()
    plan = triton_decode.DecodePlan(kp, vp, seg)
    # 16 or 32 words a row: INT4 at head_dim 128, INT8 at 64/128 (INT4 at 64 is 8 words: the Triton kernel)
    assert plan.gluon == (dim * bits // 32 in (16, 32))
    kd, vd = kernels.dequantize(kp, seg, torch.float64), kernels.dequantize(vp, seg, torch.float64)
    want = reference.decode_attention(q.double(), kd, vd, seg, dtype=torch.float64)
    got = plan(q)
    assert got.dtype == torch.float16 and got.shape == q.shape
    assert not torch.isnan(got[2]).any() and got[2].abs().max().item() == 0.0  # an empty head attends to nothing
    assert _rel(got, want) < 2e-3
    other = triton_decode.decode_attention(q, kp, vp, seg, gluon=False)
    assert _rel(got, other) < 2e-3


@needs_cuda
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("kgroups,vgroups", [(2, 2), (2, 1), (1, 2)])
@pytest.mark.parametrize("dim", [64, 128])
def test_two_scale_groups_a_row_match_float64(bits, sym, kgroups, vgroups, dim):
    # the default int4 recipe (group 64 at head_dim 128): the query split by half for keys, p scaled per half for
    # values - a slip in either half's mask or scale shows as a large error
    gen = torch.Generator().manual_seed(bits * 7 + kgroups * 3 + vgroups + dim + sym)
    lengths = [1000, 77, 0, 513, 4096]
    seg, kp, vp = _packed(bits, sym, dim, lengths, gen, kgroup=dim // kgroups, vgroup=dim // vgroups)
    q = torch.randn(len(lengths), 8, dim, generator=gen).half().cuda()
    plan = triton_decode.DecodePlan(kp, vp, seg)
    assert plan.gluon == (dim * bits // 32 >= 16)
    kd, vd = kernels.dequantize(kp, seg, torch.float64), kernels.dequantize(vp, seg, torch.float64)
    want = reference.decode_attention(q.double(), kd, vd, seg, dtype=torch.float64)
    assert _rel(plan(q), want) < 2e-3
    assert _rel(plan(q), triton_decode.decode_attention(q, kp, vp, seg, gluon=False)) < 2e-3


@needs_cuda
@pytest.mark.parametrize("block,programs,prefetch", [(16, 4, True), (32, 16, False), (32, 3, True), (64, 64, False),
                                                     (128, 8, False)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gluon_tiles_slices_prefetch_and_dtype_do_not_change_the_answer(block, programs, prefetch, dtype):
    gen = torch.Generator().manual_seed(block + programs)
    seg, kp, vp = _packed(4, False, 128, [3000, 1, 64, 2049], gen)
    q = torch.randn(4, 8, 128, generator=gen).to(dtype).cuda()
    kd, vd = kernels.dequantize(kp, seg, torch.float64), kernels.dequantize(vp, seg, torch.float64)
    want = reference.decode_attention(q.double(), kd, vd, seg, dtype=torch.float64)
    plan = triton_decode.DecodePlan(kp, vp, seg, gluon_block=block, gluon_programs=programs, gluon_prefetch=prefetch)
    got = plan(q)
    assert got.dtype == dtype and _rel(got, want) < (2e-3 if dtype == torch.float16 else 8e-3)


@needs_cuda
@pytest.mark.parametrize("query_tokens", [1, 2])
def test_gluon_with_a_dense_tail(query_tokens):
    # packed rows through the Gluon kernel, the tail (and its causal new tokens) through the Triton one
    gen = torch.Generator().manual_seed(40 + query_tokens)
    lengths, t = [700, 0, 1500], 12
    seg, kp, vp = _packed(4, False, 128, lengths, gen)
    S = len(lengths)
    q = torch.randn(S, 4 * query_tokens, 128, generator=gen).half().cuda()
    tk = torch.randn(S, t, 128, generator=gen).half().cuda()
    tv = torch.randn(S, t, 128, generator=gen).half().cuda()
    tail = Segments.from_lengths([t] * S, device="cuda")
    kd, vd = kernels.dequantize(kp, seg, torch.float64), kernels.dequantize(vp, seg, torch.float64)
    want = reference.decode_attention(q.double(), kd, vd, seg, tk.reshape(-1, 128).double(),
                                      tv.reshape(-1, 128).double(), tail, query_tokens=query_tokens,
                                      dtype=torch.float64)
    got = triton_decode.decode_attention(q, kp, vp, seg, tk, tv, query_tokens=query_tokens, gluon=True)
    assert _rel(got, want) < 2e-3


@needs_cuda
def test_more_than_sixteen_rows_fall_back_to_triton():
    gen = torch.Generator().manual_seed(3)
    seg, kp, vp = _packed(4, False, 128, [300, 200], gen)
    q = torch.randn(2, 32, 128, generator=gen).half().cuda()
    kd, vd = kernels.dequantize(kp, seg, torch.float64), kernels.dequantize(vp, seg, torch.float64)
    want = reference.decode_attention(q.double(), kd, vd, seg, dtype=torch.float64)
    assert _rel(triton_decode.decode_attention(q, kp, vp, seg), want) < 2e-3


def test_gluon_is_chosen_only_where_it_runs(monkeypatch):
    codes = torch.zeros(8, 64, dtype=torch.uint8)
    scales = torch.ones(8, 1, dtype=torch.float16)
    rows = PackedRows(codes, scales, None, 4, 128, "token", 128)
    assert not gluon_decode.supported(rows, rows, 8)  # CPU codes: no compiled kernel
    seg = Segments.from_lengths([8])
    assert not triton_decode.DecodePlan(rows, rows, seg).gluon
    with pytest.raises(InputError, match="gluon=True"):
        triton_decode.DecodePlan(rows, rows, seg, gluon=True)
    if torch.cuda.is_available():
        on = PackedRows(codes.cuda(), scales.cuda(), None, 4, 128, "token", 128)
        assert gluon_decode.supported(on, on, 16) and not gluon_decode.supported(on, on, 17)
        small = PackedRows(torch.zeros(8, 32, dtype=torch.uint8, device="cuda"), on.scales, None, 4, 64, "token", 64)
        assert not gluon_decode.supported(small, small, 8)  # INT4 at head_dim 64: 8 words a row, under one mma k16
        grouped = PackedRows(torch.zeros(8, 64, dtype=torch.uint8, device="cuda"),
                             torch.ones(8, 4, dtype=torch.float16, device="cuda"), None, 4, 32, "token", 128)
        assert not gluon_decode.supported(grouped, on, 8)  # four scale groups a row: the Triton kernel
        odd = PackedRows(torch.zeros(8 * 64 + 1, dtype=torch.uint8, device="cuda")[1:].view(8, 64), on.scales, None,
                         4, 128, "token", 128)
        assert not gluon_decode.supported(odd, on, 8)  # codes off 16-byte alignment: no vector loads
        monkeypatch.setenv("KVSTACK_GLUON", "0")
        assert not triton_decode.DecodePlan(on, on, seg.to("cuda")).gluon


@pytest.mark.parametrize("segments,rows", [(128, 128 * 32768), (128, 128 * 131072), (1024, 1024 * 4096), (66, 66 * 7)])
def test_many_segments_are_sliced_into_exactly_one_wave(segments, rows):
    # a few programs over one wave run as a second round while the rest of the GPU idles (25-30% on an H100)
    sms = 132
    block, per_sm, prefetch, whole = gluon_decode.plan(segments, rows, sms, 4)
    assert (block, prefetch, whole) == (64, False, True)
    splits, chunk = triton_decode._splits(segments, rows // segments, block, sms * per_sm, whole=True)
    assert segments * splits <= max(segments, sms * gluon_decode.RESIDENT[4, 64, 1])
    assert chunk % block == 0 and splits * chunk >= rows // segments  # whole tiles, every row covered
    assert gluon_decode.plan(segments, rows, sms, 8)[1] == gluon_decode.RESIDENT[8, 64, 1]
    assert gluon_decode.plan(segments, rows, sms, 4, 2)[:3] == (32, gluon_decode.RESIDENT[4, 32, 2], False)


@pytest.mark.parametrize("segments,rows,per_sm", [(8, 8 * 32768, 4), (8, 8 * 131072, 8), (32, 32 * 32768, 8)])
def test_few_segments_prefetch_with_short_tiles(segments, rows, per_sm):
    assert gluon_decode.plan(segments, rows, 132, 4) == (32, per_sm, True, False)
    assert gluon_decode.plan(segments, rows, 132, 4, 2) == (32, per_sm, False, False)  # two groups: no prefetch


@needs_cuda
def test_repeated_calls_launch_directly_and_agree():
    # the first call of a shape compiles through Triton's dispatch; later ones launch the compiled kernel directly
    gen = torch.Generator().manual_seed(11)
    seg, kp, vp = _packed(4, False, 128, [500, 2000], gen)
    kd, vd = kernels.dequantize(kp, seg, torch.float64), kernels.dequantize(vp, seg, torch.float64)
    plan = triton_decode.DecodePlan(kp, vp, seg)
    for _ in range(3):
        q = torch.randn(2, 8, 128, generator=gen).half().cuda()
        want = reference.decode_attention(q.double(), kd, vd, seg, dtype=torch.float64)
        assert _rel(plan(q), want) < 2e-3
    assert len(plan._gluon_launch.compiled) == 1
    # a query off 16-byte alignment would compile differently: it takes its own entry, not the aligned kernel
    odd = torch.empty(q.numel() + 1, dtype=q.dtype, device="cuda")[1:].view(q.shape)
    odd.copy_(q)
    assert _rel(plan(odd), want) < 2e-3 and len(plan._gluon_launch.compiled) == 2
