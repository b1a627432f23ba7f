"""Rotated quantization (``int2:rot``): R orthogonal in float64, the error of R^T Q(R x) - x bounded by the
step sizes in the rotated basis (and of the same length, R being orthogonal), smaller than plain rounding on
rows with outlier channels, the same bytes as without rotation, typed errors, and generation through the
normal decode path (never the GPU kernels' view of the codes)."""

from __future__ import annotations

import pytest
import torch
from test_quant_generate import dense_copy
from test_quant_rows import error_bound

import kvstack
from kvstack.errors import RecipeError
from kvstack.hf import fast_decode
from kvstack.rows.quant import QuantRows
from kvstack.rows.rotate import HadamardRows, hadamard, rotation
from kvstack.stack import parse_stage


def rows_with_outliers(n: int = 256, d: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    x[:, [3, 17, 40]] *= torch.tensor([25.0, -15.0, 10.0])  # a few channels hold most of the magnitude
    return x


@pytest.mark.parametrize("width", [1, 2, 4, 16, 64, 128])
@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_rotation_is_orthogonal_and_a_signed_hadamard(width, seed):
    r = rotation(width, seed)
    assert r.dtype == torch.float64
    eye = torch.eye(width, dtype=torch.float64)
    assert float((r @ r.T - eye).abs().max()) <= 1e-12
    assert float((r.T @ r - eye).abs().max()) <= 1e-12
    assert float((r.abs() - width**-0.5).abs().max()) <= 1e-15  # every entry spreads: +-1/sqrt(d)
    signs = torch.sign(r[0]) * torch.sign(hadamard(width)[0])  # column signs s_j (H's first row is all +)
    assert torch.equal(r, hadamard(width) * signs)  # H @ diag(s)
    assert torch.equal(rotation(width, seed), r)  # regenerated identically: nothing needs storing


def test_seeds_give_different_rotations():
    assert not torch.equal(rotation(64, 0), rotation(64, 1))


@pytest.mark.parametrize("spec", ["int8:rot", "int4:rot", "int4:g32,rot", "int3:rot,sym", "int2:rot",
                                  "int2:g16,axis=channel,rot", "int4:axis=channel,rot,seed=7"])
def test_round_trip_error_is_the_rotated_basis_error(spec):
    x = rows_with_outliers()
    lengths = (100, 156)
    stage = parse_stage(spec)
    enc = stage.quantize(x, lengths)
    assert isinstance(enc, HadamardRows) and isinstance(enc.inner, QuantRows)
    r = rotation(64, stage.seed)
    y = x.double() @ r.T  # float64 reference of the rotated rows
    # the codes are within half a step of the rotated rows (the rotation itself was computed in fp32)
    inner_err = (enc.inner.decode().double() - y).abs()
    slack = 1e-5 * y.abs().amax(1, keepdim=True)
    assert bool((inner_err <= error_bound(enc.inner, y) + slack).all())
    # and un-rotating keeps the error's length: |R^T Q(Rx) - x| = |Q(Rx) - Rx| per row
    out = enc.decode()
    assert out.dtype == x.dtype and out.shape == x.shape
    row_err = (out.double() - x.double()).norm(dim=1)
    rot_err = (enc.inner.decode().double() - y).norm(dim=1)
    assert bool(((row_err - rot_err).abs() <= 1e-4 * x.double().norm(dim=1)).all())


@pytest.mark.parametrize("bits", [2, 3])
def test_rotation_beats_plain_rounding_on_outlier_channels(bits):
    x = rows_with_outliers(seed=3)
    plain = parse_stage(f"int{bits}").quantize(x, (256,)).decode()
    rotated = parse_stage(f"int{bits}:rot").quantize(x, (256,)).decode()
    e_plain, e_rot = float((plain - x).norm()), float((rotated - x).norm())
    assert e_rot < 0.7 * e_plain, (e_rot, e_plain)


@pytest.mark.parametrize("spec", ["int2", "int3", "int4:g32", "int8", "int2:axis=channel,g32"])
def test_bytes_are_those_of_the_unrotated_quantizer(spec):
    x = rows_with_outliers()
    plain = parse_stage(spec).quantize(x, (128, 128))
    rotated = parse_stage(spec + (",rot" if ":" in spec else ":rot")).quantize(x, (128, 128))
    assert rotated.nbytes == plain.nbytes
    if spec == "int2":  # by hand: 64 two-bit codes = 16 bytes + fp16 scale + fp16 zero per row
        assert rotated.nbytes == 256 * (16 + 2 + 2)


@pytest.mark.parametrize("spec", ["int4:token,rot", "int2:axis=channel,g8,rot"])
def test_select_keeps_the_decoded_rows(spec):
    x = rows_with_outliers(n=64)
    enc = parse_stage(spec).quantize(x, (32, 32))
    keep = torch.tensor([0, 5, 6, 31, 32, 40, 63])
    sub = enc.select(keep)
    assert isinstance(sub, HadamardRows) and sub.shape == (7, 64)
    if spec.startswith("int4"):  # per-token codes are just picked: exact
        assert torch.equal(sub.decode(), enc.decode()[keep])
    else:  # per-channel groups are requantized in the rotated basis: within one more rounding
        step = float(enc.inner.scales.float().max())
        assert float((sub.decode() - enc.decode()[keep]).abs().max()) <= 64**0.5 * step


def test_typed_errors():
    with pytest.raises(RecipeError, match="power-of-two.*head_dim.*48.*nearest below: 32"):
        parse_stage("int2:rot").quantize(torch.randn(8, 48), (8,))
    with pytest.raises(RecipeError, match="seed"):
        parse_stage("int4:rot,seed=-1")
    with pytest.raises(RecipeError, match="rot"):
        parse_stage("int4:rot=maybe")
    with pytest.raises(RecipeError, match="power-of-two"):
        hadamard(12)


def test_int8_rot_generates_like_the_full_cache(tiny_model, make_ids):
    model = tiny_model("llama")
    ctx, question = make_ids(96, seed=1), make_ids(5, seed=2)
    cache = kvstack.compress(model, ctx, "int8:rot")
    assert isinstance(cache.layers[0].keys, HadamardRows)
    full = kvstack.generate(model, kvstack.compress(model, ctx, "identity"), question, max_new_tokens=8)
    assert torch.equal(kvstack.generate(model, cache, question, max_new_tokens=8), full)


@pytest.mark.parametrize("recipe", ["int2:rot", "snapkv:0.5 > int4:axis=channel,rot",
                                    "int4:rot > streaming:sink=4,window=40"])
def test_generation_is_over_the_unrotated_rows(recipe, tiny_model, make_ids):
    """Decoding reads R^T Q(R x), not the codes: generation equals generation over the decoded rows."""
    model = tiny_model("qwen3")
    ctx, question = make_ids(96, seed=1), make_ids(5, seed=2)
    cache = kvstack.compress(model, ctx, recipe)
    assert isinstance(cache.layers[0].values, HadamardRows)
    got = kvstack.generate(model, cache, question, max_new_tokens=6)
    assert torch.equal(got, kvstack.generate(model, dense_copy(cache), question, max_new_tokens=6))


def test_gpu_fast_decode_reads_rotated_codes_in_the_rotated_basis():
    enc = parse_stage("int4:rot,seed=7").quantize(rows_with_outliers(n=16), (16,))
    rows, seed = fast_decode.kernel_rows(enc, torch.float32)
    assert seed == 7 and rows.codes is enc.inner.codes  # the codes as stored; the query is rotated instead
    assert fast_decode.kernel_rows(enc.inner, torch.float32)[1] is None  # plain codes: no rotation


@pytest.mark.parametrize("spec", ["int2:clip=0.7", "int2:rot,clip=0.7", "int3:g16,axis=channel,rot,clip=0.8"])
def test_clip_shrinks_each_group_around_its_middle(spec):
    from test_quant_rows import ref_group_ids

    x = rows_with_outliers(n=96)
    stage = parse_stage(spec)
    enc = stage.quantize(x, (40, 56))
    inner = enc.inner if isinstance(enc, HadamardRows) else enc
    y = x.double() @ rotation(64, 0).T if stage.rot else x.double()
    # float64 reference of the clamp, group by group (per token: the whole row here; per channel: tokens of a head)
    if inner.axis == "token":
        lo, hi = y.amin(1, keepdim=True).expand_as(y), y.amax(1, keepdim=True).expand_as(y)
    else:
        ids = ref_group_ids(inner, y.shape[0])
        lo = torch.stack([y[ids == i].amin(0) for i in range(int(ids.max()) + 1)])[ids]
        hi = torch.stack([y[ids == i].amax(0) for i in range(int(ids.max()) + 1)])[ids]
    mid, half = (lo + hi) / 2, (hi - lo) / 2 * stage.clip
    clamped = torch.minimum(torch.maximum(y, mid - half), mid + half)
    assert bool(((clamped - y).abs() > 0).any())  # something really was clipped
    slack = 1e-5 * y.abs().amax(1, keepdim=True)
    err = (inner.decode().double() - y).abs()
    assert bool((err <= (clamped - y).abs() + error_bound(inner, clamped) + slack).all())
    # the scales cover the clipped range only: a finer step than min-max would give
    plain = parse_stage(spec.replace(f"clip={stage.clip}", "clip=1")).quantize(x, (40, 56))
    plain_inner = plain.inner if isinstance(plain, HadamardRows) else plain
    assert float(inner.scales.float().mean()) < float(plain_inner.scales.float().mean())


def test_clip_one_is_no_clip_and_clipping_helps_rotated_2_bit():
    x = rows_with_outliers(seed=5)
    a, b = parse_stage("int2:rot").quantize(x, (256,)), parse_stage("int2:rot,clip=1").quantize(x, (256,))
    assert torch.equal(a.inner.codes, b.inner.codes) and torch.equal(a.inner.scales, b.inner.scales)
    clipped = parse_stage("int2:rot,clip=0.7").quantize(x, (256,))
    assert clipped.nbytes == a.nbytes
    assert float((clipped.decode() - x).norm()) < 0.9 * float((a.decode() - x).norm())


@pytest.mark.parametrize("bad", ["int2:clip=0", "int2:clip=1.5", "int2:clip=nan", "int2:clip=half"])
def test_bad_clip_is_a_recipe_error(bad):
    with pytest.raises(RecipeError, match="clip"):
        parse_stage(bad)
