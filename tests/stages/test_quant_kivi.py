"""KIVI storage: the most recent `residual` tokens of each head stay bit-exact, older keys are
quantized per channel and older values per token, bytes add up by hand, and eviction keeps
the split (dense rows stay dense, quantized rows stay quantized)."""

from __future__ import annotations

import math

import pytest
import torch

from kvstack.errors import RecipeError
from kvstack.kv import DenseRows, KVLayer
from kvstack.rows.quant import QuantRows
from kvstack.rows.split import SplitRows
from kvstack.stack import Recipe, StageContext
from kvstack.stages.quant.kivi import Kivi, recent_mask
from kvstack.stages.select.streaming import streaming_keep

CTX = StageContext(num_query_heads=4, num_kv_heads=2, head_dim=64, num_layers=1)


def layer_of(heads: int, tokens: int, dim: int, dtype=torch.float32, seed: int = 0) -> KVLayer:
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(heads, tokens, dim, generator=g).to(dtype)
    v = torch.randn(heads, tokens, dim, generator=g).to(dtype)
    return KVLayer.from_dense(k, v)


def half_step_ok(q: QuantRows, x: torch.Tensor) -> bool:
    """|x - decode| <= scale/2 + fp32 rounding, for fp32 rows (see test_quant_rows for the derivation)."""
    n = x.shape[0]
    if q.axis == "token":
        s = q.scales.double().repeat_interleave(q.group, 1)
    else:
        ids, base = [], 0
        for length in q.segments:
            ids += [base + i // q.group for i in range(length)]
            base += math.ceil(length / q.group)
        s = q.scales.double()[torch.tensor(ids, dtype=torch.long)]
    err = (q.decode().double() - x.double()).abs()
    mag = x.double().abs() + s
    bound = s / 2 + s * ((1 << q.bits) - 1) * 2.0**-22 + mag * 2.0**-23
    return n == err.shape[0] and bool((err <= bound).all())


def test_residual_exact_rest_quantized_keys_per_channel_values_per_token():
    layer = layer_of(2, 100, 64)
    out = Kivi(bits=2, group=32, residual=20).apply_layer(0, layer, CTX)
    pairs = ((out.keys, layer.keys.decode(), "channel"), (out.values, layer.values.decode(), "token"))
    for enc, orig, axis in pairs:
        assert isinstance(enc, SplitRows) and enc.shape == (200, 64) and enc.dtype == torch.float32
        dec = enc.decode()
        recent = torch.cat([torch.arange(80, 100), torch.arange(180, 200)])
        older = torch.cat([torch.arange(0, 80), torch.arange(100, 180)])
        assert torch.equal(dec[recent], orig[recent])  # full precision, bit-exact
        assert enc.quant.axis == axis and enc.quant.bits == 2 and not enc.quant.sym
        assert half_step_ok(enc.quant, orig[older])
        assert torch.equal(dec[older], enc.quant.decode())
    assert out.keys.quant.segments == (80, 80)  # key groups cut per head
    assert out.keys.quant.scales.shape == (2 * 3, 64)  # ceil(80 / 32) = 3 groups per head, last partial
    assert out.values.quant.scales.shape == (160, 2)  # 64 channels / 32


def test_nbytes_hand_count_and_real_storage():
    layer = layer_of(2, 100, 64, dtype=torch.float16)
    out = Kivi(bits=2, group=32, residual=20).apply_layer(0, layer, CTX)
    h, old, recent, d = 2, 80, 20, 64
    keys = h * old * d // 4 + 2 * (h * math.ceil(old / 32) * d) * 2 + h * recent * d * 2
    values = h * old * d // 4 + 2 * (h * old * d // 32) * 2 + h * recent * d * 2
    assert out.keys.nbytes == keys and out.values.nbytes == values
    for enc in (out.keys, out.values):
        held = [enc.quant.codes, enc.quant.scales, enc.quant.zeros, enc.dense.data]
        assert enc.nbytes == sum(t.numel() * t.element_size() for t in held)
        assert enc.quant.codes.dtype == torch.uint8 and enc.dense.data.dtype == torch.float16
    # kivi:4 with group 64: 4 bits + 2 x 16 / 64 bits = 4.5 bits per quantized element
    out4 = Kivi(bits=4, group=64, residual=0).apply_layer(0, layer, CTX)
    assert out4.values.nbytes * 8 == pytest.approx(h * 100 * d * 4.5)


def test_residual_follows_positions_after_eviction_and_ragged_heads():
    layer = layer_of(2, 40, 8)
    pos = layer.row_positions()
    keep = [streaming_keep(pos[:40], 2, 10), streaming_keep(pos[40:], 2, 25)]  # 12 and 27 rows
    ragged = layer.select_rows(keep)
    mask = recent_mask(ragged, 5)
    assert mask.tolist() == [False] * 7 + [True] * 5 + [False] * 22 + [True] * 5
    out = Kivi(bits=4, group=4, residual=5).apply_layer(0, ragged, CTX)
    assert out.keys.quant.segments == (7, 22)
    assert torch.equal(out.keys.decode()[mask], ragged.keys.decode()[mask])
    assert out.keys.runs == ((False, 7), (True, 5), (False, 22), (True, 5))


def test_select_keeps_dense_rows_dense():
    layer = layer_of(2, 30, 16)
    out = Kivi(bits=2, group=8, residual=6).apply_layer(0, layer, CTX)
    pos = out.row_positions()
    keep = [streaming_keep(pos[:30], 3, 10), streaming_keep(pos[30:], 3, 10)]
    small = out.select_rows(keep)
    assert isinstance(small.keys, SplitRows) and small.keys.shape == (26, 16)
    assert small.keys.dense.shape == (12, 16)  # the 6 most recent of each head are still dense
    kept_rows = torch.cat([keep[0], 30 + keep[1]])
    before = out.keys.decode()[kept_rows]
    recent = torch.tensor([(r % 30) >= 24 for r in kept_rows.tolist()])
    assert torch.equal(small.keys.decode()[recent], before[recent])
    # values are per token: selected without requantization
    assert torch.equal(small.values.decode(), out.values.decode()[kept_rows])
    # keys are per channel: requantized within half a step of what was there
    assert half_step_ok(small.keys.quant, before[~recent])
    assert small.keys.nbytes == small.keys.quant.nbytes + small.keys.dense.nbytes


def test_residual_covering_everything_is_identity_and_zero_quantizes_all():
    layer = layer_of(2, 16, 8)
    out = Kivi(bits=2, residual=16).apply_layer(0, layer, CTX)
    assert torch.equal(out.keys.decode(), layer.keys.decode()) and out.keys.quant.shape == (0, 8)
    none = Kivi(bits=2, residual=0, group=4).apply_layer(0, layer, CTX)
    assert none.keys.dense.shape == (0, 8) and none.keys.runs == ((False, 32),)
    assert isinstance(none.keys.dense, DenseRows)


@pytest.mark.parametrize(
    ("recipe", "match"),
    [
        ("kivi:3", r"KIVI bit widths: 2, 4"),
        ("kivi:8", r"KIVI bit widths: 2, 4"),
        ("kivi:2,residual=-1", "residual"),
        ("kivi:2,g0", "group"),
        ("kivi:2,axis=token", "no parameter 'axis'"),
    ],
)
def test_bad_kivi_recipes(recipe, match):
    with pytest.raises(RecipeError, match=match):
        Recipe.parse(recipe)


def test_kivi_parses_shorthand():
    stage = Recipe.parse("kivi:4,g16,residual=64").stages[0]
    assert (stage.bits, stage.group, stage.residual) == (4, 16, 64)
    assert Recipe.parse(stage.spec()).stages[0].spec() == stage.spec()
