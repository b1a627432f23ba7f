"""cq: coupled quantization against brute-force float64 nearest centroids, exact packing, bytes
counted by hand (codebooks counted when fitted on the cache, not when calibrated), errors."""

from __future__ import annotations

import pytest
import torch
from quant_helpers import CTX, D, H, T, cache_of, calibration_file, layer_of

from kvstack.errors import RecipeError
from kvstack.rows.pack import packed_width, unpack_codes
from kvstack.stack import Recipe
from kvstack.stages.quant.cq import CQRows


@pytest.mark.parametrize("bits, channels", [(1, 4), (2, 4), (1, 2), (2, 1), (1, 8)])
def test_codes_are_the_brute_force_nearest_centroid(bits, channels):
    g = torch.Generator().manual_seed(bits * 10 + channels)
    x = torch.randn(2 * 60, 8, generator=g, dtype=torch.float64)
    q = CQRows.quantize(x, bits, channels, (60, 60))
    groups, k = 8 // channels, 1 << (bits * channels)
    assert q.codes.dtype == torch.uint8 and q.codes.shape == (120, packed_width(groups, bits * channels))
    assert q.codebook.shape == (2, groups, k, channels) and q.codebook.dtype == torch.float16
    codes = unpack_codes(q.codes, bits * channels, groups).long()
    out = q.decode().double()
    for h in range(2):
        for grp in range(groups):
            pts = x[h * 60 : (h + 1) * 60, grp * channels : (grp + 1) * channels]
            cent = q.codebook[h, grp].double()
            dist = torch.cdist(pts, cent)
            chosen = dist.gather(1, codes[h * 60 : (h + 1) * 60, grp : grp + 1])[:, 0]
            assert bool((chosen <= dist.min(1).values + 1e-4).all())  # nearest (fp32 distances, ties)
            torch.testing.assert_close(out[h * 60 : (h + 1) * 60, grp * channels : (grp + 1) * channels],
                                       cent[codes[h * 60 : (h + 1) * 60, grp]], atol=0, rtol=0)


def test_two_bits_beat_one_and_coupling_beats_per_channel_codebooks():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(400, 1, generator=g)
    x = torch.cat([base + 0.1 * torch.randn(400, 4, generator=g), torch.randn(400, 4, generator=g)], 1)
    err = lambda b, c: float((CQRows.quantize(x, b, c, (400,)).decode().float() - x).norm())
    assert err(2, 4) < err(1, 4)
    assert err(2, 2) < err(2, 1)  # correlated channels: 16 joint centroids per pair beat 4 levels per channel


def test_nbytes_hand_count_fitted_and_calibrated(tmp_path):
    c = cache_of(layer_of(5), "fp-model")
    own = Recipe.parse("cq:1").apply(c, CTX).layers[0]
    n, groups = H * (T - 1), D // 4
    codes = n * groups * 4 // 8  # one 4-bit code per 4 channels
    book = H * groups * 16 * 4 * 2  # fp16 [H, d/4, 16, 4]
    sink = H * D * 2  # the first token in fp16
    assert own.keys.nbytes == own.values.nbytes == codes + book + sink
    path = calibration_file(tmp_path)
    cal = Recipe.parse(f"cq:2,calibration={path}").apply(c, CTX).layers[0]
    assert cal.keys.nbytes == n * groups + sink  # 8-bit codes; the calibrated codebook is not counted
    assert not cal.keys.inner.owns_codebook and cal.meta["codebook"].startswith("calibrated")


def test_eviction_keeps_codes():
    full = Recipe.parse("cq:2,sink=0").apply(cache_of(layer_of(6)), CTX).layers[0]
    keep = [torch.tensor([1, 4, 9]), torch.tensor([0, 49])]
    sel = full.select_rows(keep)
    picked = torch.cat([keep[0], T + keep[1]])
    assert torch.equal(sel.keys.decode(), full.keys.decode()[picked])
    assert sel.keys.segments == (3, 2)


@pytest.mark.parametrize(
    ("recipe", "match"),
    [
        ("cq:3", "cq:3 does not exist"),
        ("cq:2,channels=3", r"6-bit codes.*pick channels from \[1, 2, 4\]"),
        ("cq:1,channels=5", r"5-bit codes"),
        ("cq:1,channels=0", "channels=0"),
        ("cq:1,sink=-2", "sink=-2"),
    ],
)
def test_bad_options(recipe, match):
    with pytest.raises(RecipeError, match=match):
        Recipe.parse(recipe)


def test_channels_must_divide_head_dim():
    with pytest.raises(RecipeError, match="channels=3 does not divide head_dim=16"):
        Recipe.parse("cq:1,channels=3").apply(cache_of(layer_of()), CTX)
