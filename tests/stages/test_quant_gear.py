"""gear: uniform codes + exact outliers + the best rank-r fix of the quantization error, against
float64 references (the error left is the SVD tail of the residual), bytes counted by hand."""

from __future__ import annotations

import math

import pytest
import torch
from quant_helpers import CTX, D, H, T, cache_of, layer_of

from kvstack.errors import RecipeError
from kvstack.rows.quant import QuantRows
from kvstack.stack import Recipe
from kvstack.stages.quant.gear import GearRows


def rows(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(H * T, D, generator=g, dtype=torch.float64) * torch.logspace(0, 1, D, dtype=torch.float64)
    x.view(-1)[torch.randint(0, H * T * D, (8,), generator=g)] *= 25
    return x


@pytest.mark.parametrize("axis, group", [("channel", 16), ("token", 8)])
@pytest.mark.parametrize("bits, rank", [(2, 3), (4, 2), (2, 0)])
def test_error_left_is_the_svd_tail_of_the_residual(axis, group, bits, rank):
    x = rows()
    enc = GearRows.encode(x, bits, group, axis, (T, T), rank, 0.02)
    mask = enc.outliers.mask(H * T)
    out = enc.dequantize()
    assert bool(((out - x).abs()[mask] <= x.abs()[mask] * 2.0**-11).all())  # outliers: fp16-exact
    residual = (x - enc.quant.dequantize().double()).masked_fill(mask, 0.0)
    for h in range(H):
        part = slice(h * T, (h + 1) * T)
        s = torch.linalg.svdvals(residual[part])
        tail = float(s[rank:].pow(2).sum().sqrt())
        fix = enc.a[part].double() @ enc.b[h].double().mT
        assert float((residual[part] - fix).norm()) == pytest.approx(tail, rel=2e-3, abs=1e-3)  # fp16 factors
        left = float((out[part] - x[part]).norm())  # what decoding gives: the fix, outliers written over it
        assert left <= tail * (1 + 2e-3) + 1e-3
        if rank:
            assert left < float(residual[part].norm())


def test_rank_zero_without_outliers_is_plain_kivi_layout_quantization():
    x = rows(1)
    enc = GearRows.encode(x, 2, 16, "channel", (T, T), 0, 0.0)
    ref = QuantRows.quantize(x, 2, 16, "channel", False, (T, T))
    assert torch.equal(enc.dequantize(), ref.dequantize().double())
    assert enc.nbytes == ref.nbytes + H * D * 0 * 2


def test_more_rank_and_bits_lower_the_error():
    x = rows(2)
    err = lambda bits, rank: float((GearRows.encode(x, bits, 16, "channel", (T, T), rank, 0.01).decode() - x).norm())
    assert err(2, 8) < err(2, 2) < err(2, 0)
    assert err(4, 2) < err(2, 2)


def test_nbytes_hand_count():
    out = Recipe.parse("gear:2,rank=3,outliers=0.02,g32").apply(cache_of(layer_of()), CTX).layers[0]
    assert isinstance(out.keys, GearRows) and out.keys.quant.codes.dtype == torch.uint8
    n, r = H * T, 3
    codes = n * D // 4  # four 2-bit codes per byte
    outliers = round(0.02 * n * D) * (4 + 2)
    factors = n * r * 2 + H * D * r * 2  # fp16 A (per row) and B (per head)
    key_groups = H * math.ceil(T / 32) * D  # 32 tokens of one channel of one head
    value_groups = n * 1  # g32 capped at head_dim 16: one group per row
    assert out.keys.nbytes == codes + key_groups * 4 + outliers + factors
    assert out.values.nbytes == codes + value_groups * 4 + outliers + factors


def test_eviction_keeps_factor_rows_and_outliers():
    full = Recipe.parse("gear:4,rank=2").apply(cache_of(layer_of(4)), CTX).layers[0]
    keep = [torch.tensor([0, 5, 49]), torch.tensor([2, 3])]
    sel = full.select_rows(keep)
    picked = torch.cat([keep[0], T + keep[1]])
    torch.testing.assert_close(sel.values.decode(), full.values.decode()[picked], atol=1e-6, rtol=0)  # per token
    # keys are per channel: requantized within the kept rows (one more rounding, within one step)
    step = float(full.keys.quant.scales.float().max())
    assert float((sel.keys.decode() - full.keys.decode()[picked]).abs().max()) <= step
    assert sel.keys.a.shape == (5, 2) and sel.keys.b.shape == (H, D, 2)


@pytest.mark.parametrize(
    ("recipe", "match"),
    [
        ("gear:5", "gear:5 does not exist"),
        ("gear:8", "bit widths: 2, 3, 4"),
        ("gear:4,rank=-1", "rank=-1 must be >= 0"),
        ("gear:4,outliers=1.5", r"outliers=1.5 must be a share in \[0, 1\)"),
        ("gear:4,g0", "group=0"),
        ("gear:4,rank=two", "not a valid int"),
    ],
)
def test_bad_options(recipe, match):
    with pytest.raises(RecipeError, match=match):
        Recipe.parse(recipe)


def test_value_group_must_divide_head_dim():
    with pytest.raises(RecipeError, match="group=12 does not divide head_dim=16"):
        Recipe.parse("gear:4,g12").apply(cache_of(layer_of()), CTX)
