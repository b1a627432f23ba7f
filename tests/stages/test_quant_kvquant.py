"""kvquant: non-uniform codes against float64 references (every inlier within the codebook's
worst-case distance times its scale, codes the brute-force nearest level), the sparse outlier
table, pre-RoPE keys, bytes counted by hand, calibrated codebooks and errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from quant_helpers import CTX, ROT, D, H, T, cache_of, calibration_file, layer_of

from kvstack.errors import InputError, ModelError, RecipeError
from kvstack.kv import DenseRows, KVLayer
from kvstack.rows.pack import packed_width, unpack_codes
from kvstack.stack import Recipe, StageContext
from kvstack.stages.common.keep import KeptRows
from kvstack.stages.common.rope import NEED_ROPE
from kvstack.stages.lowrank.calibration import save_basis
from kvstack.stages.quant.kvquant import KVQuant
from kvstack.stages.quant.nuq import NuqRows
from kvstack.stages.quant.rope import RotatedRows


def rows_with_outliers(n: int, d: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.logspace(0, 1, d, dtype=torch.float64)
    hit = torch.randint(0, n * d, (max(1, n * d // 200),), generator=g)
    x.view(-1)[hit] *= 30  # a few elements far outside their channel and token
    return x.to(dtype)


def worst_distance(levels: torch.Tensor) -> float:
    """Largest distance from a point of [0, 1] to the nearest of the ascending ``levels``."""
    lv = levels.double()
    gaps = (lv[1:] - lv[:-1]) / 2
    return max(float(lv[0]), 1 - float(lv[-1]), float(gaps.max()) if gaps.numel() else 0.0)


def check_round_trip(q: NuqRows, x: torch.Tensor, segments) -> None:
    x = x.double()
    heads = torch.repeat_interleave(torch.arange(len(segments)), torch.tensor(segments))
    zero = q.zero.double()[heads] if q.axis == "channel" else q.zero.double()[:, None]
    scale = q.scale.double()[heads] if q.axis == "channel" else q.scale.double()[:, None]
    scale = scale.expand_as(x)
    out = q.dequantize().double()
    mask = q.outliers.mask(x.shape[0])
    # outliers: exact up to fp16 rounding of the value
    assert bool(((out - x).abs()[mask] <= x.abs()[mask] * 2.0**-11).all())
    # inliers: inside [zero, zero + scale], and within scale * (worst distance to a level)
    inl = ~mask
    assert bool((x[inl] >= zero.expand_as(x)[inl]).all()) and bool((x[inl] <= (zero + scale)[inl] + 1e-12).all())
    dist = torch.tensor([worst_distance(q.codebook[h]) for h in range(len(segments))], dtype=torch.float64)[heads]
    assert bool(((out - x).abs()[inl] <= (scale * dist[:, None])[inl] * (1 + 1e-9) + 1e-9).all())
    # codes: the brute-force nearest level of u = (x - zero) / scale
    u = ((x - zero) / torch.where(scale > 0, scale, torch.ones_like(scale))).clamp(0, 1)
    levels = q.codebook.double()[heads]  # [n, K]
    best = (u[:, :, None] - levels[:, None, :]).abs().min(-1).values
    codes = unpack_codes(q.codes, q.bits, q.dim).long()
    chosen = (u - torch.gather(levels, 1, codes)).abs()
    assert bool((chosen[inl] <= best[inl] + 1e-12).all())


@settings(max_examples=25, deadline=None)
@given(st.sampled_from([2, 3, 4]), st.sampled_from(["channel", "token"]), st.lists(st.integers(0, 40), min_size=1,
       max_size=3), st.sampled_from([4, 8, 12]), st.sampled_from([0.0, 0.01, 0.05]), st.integers(0, 2**31 - 1))
def test_round_trip_against_float64(bits, axis, segments, d, outliers, seed):
    n = sum(segments)
    if n == 0:
        return
    x = rows_with_outliers(n, d, seed)
    q = NuqRows.quantize(x, bits, axis, segments, outliers)
    assert q.codes.dtype == torch.uint8 and q.codes.shape == (n, packed_width(d, bits))
    assert q.outliers.count == round(outliers * n * d)
    check_round_trip(q, x, segments)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_model_dtypes_decode_to_their_dtype(dtype):
    x = rows_with_outliers(40, 8, 3, dtype)
    q = NuqRows.quantize(x, 3, "channel", (20, 20), 0.01)
    assert q.decode().dtype == dtype
    check_round_trip(q, x.double(), (20, 20))


def test_more_bits_and_outliers_lower_the_error():
    x = rows_with_outliers(200, 16, 5)
    err = lambda bits, frac: float((NuqRows.quantize(x, bits, "channel", (100, 100), frac).decode() - x).norm())
    assert err(4, 0.01) < err(3, 0.01) < err(2, 0.01)
    assert err(3, 0.01) < 0.7 * err(3, 0.0)  # the outliers stretch the scales when kept in
    # non-uniform levels beat uniform int3 on the same per-channel groups (same bits, outliers kept in)
    from kvstack.rows.quant import QuantRows

    uni = QuantRows.quantize(x, 3, 100, "channel", False, (100, 100))
    assert err(3, 0.0) < float((uni.decode() - x).norm())


def test_nbytes_hand_count():
    out = Recipe.parse("kvquant:3").apply(cache_of(layer_of()), CTX).layers[0]
    assert isinstance(out.keys, KeptRows) and isinstance(out.keys.inner, RotatedRows)
    assert isinstance(out.keys.inner.inner, NuqRows) and out.keys.inner.positions is None  # nothing evicted
    assert out.keys.exact.data.dtype == torch.float16  # the sink token, fp16
    n = H * (T - 1)
    codes = n * (D // 8 * 3)  # eight 3-bit codes in three bytes
    outliers = round(0.01 * n * D) * (4 + 2)  # int32 index + fp16 value
    codebooks = H * 8 * 2  # fitted here: counted
    sink = H * 1 * D * 2
    assert out.keys.nbytes == codes + H * D * 2 * 2 + outliers + codebooks + sink  # + fp16 zero/scale per channel
    assert out.values.nbytes == codes + n * 2 * 2 + outliers + codebooks + sink  # + fp16 zero/scale per token
    assert out.meta["codebook"].startswith("fitted on this cache")


def test_pre_rope_keys_beat_post_rope_and_decode_rotates_back():
    layer = layer_of(1, offset=100.0)
    keys = layer.keys.decode()
    pre = Recipe.parse("kvquant:3,sink=0").apply(cache_of(layer), CTX).layers[0].keys
    post = Recipe.parse("kvquant:3,sink=0,rope=post").apply(cache_of(layer), CTX).layers[0].keys
    assert float((pre.decode() - keys).norm()) < 0.8 * float((post.decode() - keys).norm())
    want = ROT.rotate(pre.inner.dequantize(), layer.row_positions())  # rotation of the stored pre-RoPE rows
    torch.testing.assert_close(pre.decode(), want, atol=1e-5, rtol=0)


def test_eviction_after_kvquant_keeps_codes_and_stores_positions():
    c = cache_of(layer_of(2))
    full = Recipe.parse("kvquant:4").apply(c, CTX).layers[0]
    keep = [torch.tensor([0, 3, 10, 49]), torch.tensor([0, 7, 8])]
    sel = full.select_rows(keep)
    rows = torch.cat([keep[0], T + keep[1]])
    torch.testing.assert_close(sel.keys.decode(), full.keys.decode()[rows], atol=1e-5, rtol=0)
    torch.testing.assert_close(sel.values.decode(), full.values.decode()[rows], atol=0, rtol=0)
    assert sel.keys.inner.positions.tolist() == [3, 10, 49, 7, 8]  # the sink rows sit beside them
    assert sel.keys.inner.nbytes == sel.keys.inner.inner.nbytes + 5 * 4  # int32 positions counted


def test_calibrated_codebooks_are_used_and_not_counted(tmp_path):
    path = calibration_file(tmp_path)
    c = cache_of(layer_of(3), "fp-model")
    own = Recipe.parse("kvquant:3").apply(c, CTX).layers[0]
    cal = Recipe.parse(f"kvquant:3,calibration={path}").apply(c, CTX).layers[0]
    assert not cal.keys.inner.inner.owns_codebook and own.keys.inner.inner.owns_codebook
    assert own.keys.nbytes - cal.keys.nbytes == H * 8 * 2  # exactly the codebook
    assert cal.meta["codebook"].startswith("calibrated")
    check_round_trip(cal.values.inner, c.layers[0].values.decode()[torch.arange(H * T) % T >= 1].double(), (T - 1,) * H)


def test_calibration_file_errors(tmp_path):
    path = calibration_file(tmp_path, "another-model")
    c = cache_of(layer_of(3), "fp-model")
    with pytest.raises(ModelError, match="another model"):
        Recipe.parse(f"kvquant:3,calibration={path}").apply(c, CTX)
    with pytest.raises(InputError, match="calibrate --codebooks"):
        Recipe.parse(f"kvquant:3,calibration={tmp_path / 'missing'}").apply(c, CTX)
    save_basis(tmp_path / "basis", {"svd.k.0": torch.zeros(1)}, {"model_fingerprint": "fp-model"})
    with pytest.raises(InputError, match="not codebooks"):
        Recipe.parse(f"kvquant:3,calibration={tmp_path / 'basis'}").apply(c, CTX)


@pytest.mark.parametrize(
    ("recipe", "error", "match"),
    [
        ("kvquant:5", RecipeError, "kvquant:5 does not exist"),
        ("kvquant:8", RecipeError, "bit widths: 2, 3, 4"),
        ("kvquant:3,outliers=1.0", RecipeError, r"outliers=1.0 must be a share in \[0, 1\)"),
        ("kvquant:3,outliers=-0.1", RecipeError, "outliers"),
        ("kvquant:3,sink=-1", RecipeError, "sink=-1"),
        ("kvquant:3,rope=mid", RecipeError, "rope='mid'"),
        ("kvquant:3,outliers=lots", RecipeError, "not a valid float"),
    ],
)
def test_bad_options(recipe, error, match):
    with pytest.raises(error, match=match):
        Recipe.parse(recipe)


def test_pre_rope_without_rotary_tables_says_what_to_do():
    ctx = StageContext(num_query_heads=4, num_kv_heads=H, head_dim=D, num_layers=1)
    with pytest.raises(RecipeError, match="rotary tables"):
        Recipe.parse("kvquant:3").apply(cache_of(layer_of()), ctx)
    assert KVQuant(rope="post").needs == frozenset() and NEED_ROPE in KVQuant().needs


def test_non_finite_rows_are_refused():
    layer = layer_of()
    bad = layer.values.decode().clone()
    bad[5, 3] = float("nan")
    layer = KVLayer(layer.keys, DenseRows(bad), layer.lengths)
    with pytest.raises(InputError, match="NaN"):
        Recipe.parse("kvquant:3,outliers=0").apply(cache_of(layer), CTX)
    assert math.isfinite(float(layer.keys.decode().sum()))
