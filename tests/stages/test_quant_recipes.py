"""Quantization recipes end to end on a tiny random Llama: compress, count bytes, generate,
and compare logits with the full cache; stacking with selection and layer overrides; errors."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import kvstack
from kvstack.errors import RecipeError
from kvstack.eval.attention_error import head_rows
from kvstack.hf import CompressedCache, enable
from kvstack.hf.compat import cache_kwargs
from kvstack.kv import DenseRows
from kvstack.rows.quant import QuantRows
from kvstack.rows.rotate import HadamardRows
from kvstack.rows.split import SplitRows
from kvstack.stack import Recipe, describe_stages

T, Q, H, D = 96, 6, 2, 16  # context tokens, question tokens, KV heads, head_dim


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = LlamaForCausalLM(config).eval()
    g = torch.Generator().manual_seed(0)
    ids, question = torch.randint(3, 128, (T,), generator=g), torch.randint(3, 128, (Q,), generator=g)
    with torch.no_grad():
        full = model(input_ids=torch.cat([ids, question]).view(1, -1)).logits[0, -Q:]
    return model, ids, question, full


def question_logits(model, cache, question) -> torch.Tensor:
    with torch.no_grad(), enable(model):
        hf_cache = CompressedCache(cache, torch.float32)
        return model(input_ids=question.view(1, -1), **cache_kwargs(hf_cache)).logits[0]


def test_logit_error_ordered_by_bits(setup):
    model, ids, question, full = setup
    err = {}
    for recipe in ("identity", "int8", "int4", "int2", "kivi:4,residual=16", "kivi:2,residual=16"):
        logits = question_logits(model, kvstack.compress(model, ids, recipe), question)
        err[recipe] = float((logits - full).abs().mean())
        if recipe in ("identity", "int8"):
            assert torch.equal(logits.argmax(-1), full.argmax(-1))
    assert err["identity"] < 1e-5
    assert err["int8"] < 0.01 * float(full.std())  # int8 is close to the full cache
    assert err["int8"] < err["int4"] < err["int2"]
    assert err["kivi:4,residual=16"] < err["kivi:2,residual=16"]


def layer_bytes(bits: int, tokens: int, vgroup: int, kgroups: int, sym: bool = False) -> int:
    """Hand count of one layer's K+V: packed codes + fp16 scale (+ fp16 zero) per group."""
    per_param = 2 if sym else 4
    codes = H * tokens * D * bits // 8
    return codes + kgroups * per_param + codes + H * tokens * (D // vgroup) * per_param


@pytest.mark.parametrize(
    ("recipe", "bits", "expected"),
    [
        ("int8", 8, layer_bytes(8, T, 16, H * T, sym=True)),  # g64 capped at head_dim 16
        ("int4:token,norot", 4, layer_bytes(4, T, 16, H * T)),
        ("int3", 3, layer_bytes(3, T, 16, H * T)),
        ("int2:g8", 2, layer_bytes(2, T, 8, 2 * H * T)),
        ("int2:sym", 2, layer_bytes(2, T, 16, H * T, sym=True)),
        # per channel, 32 tokens a group: both K and V are grouped along tokens
        ("int4:g32,axis=channel,norot", 4, 2 * (H * T * D // 2 + 4 * H * 3 * D)),
    ],
)
def test_uniform_recipes_bytes_and_generate(setup, recipe, bits, expected):
    model, ids, question, full = setup
    cache = kvstack.compress(model, ids, recipe)
    for layer in cache.layers:
        assert isinstance(layer.keys, QuantRows) and layer.keys.bits == bits
        assert layer.keys.codes.dtype == torch.uint8
        assert layer.nbytes == expected
    assert cache.nbytes == 2 * expected and cache.ratio > 1
    out = kvstack.generate(model, cache, question, max_new_tokens=4)
    assert out.shape == (4,) and out.dtype == torch.long


def test_default_int4_is_rotated_channel_groups_of_32_tokens(setup):
    """The default layout (chosen on real models): rotated rows, 32 tokens of a channel per group."""
    model, ids, question, _ = setup
    cache = kvstack.compress(model, ids, "int4")
    for layer in cache.layers:
        for rows in (layer.keys, layer.values):
            assert isinstance(rows, HadamardRows) and isinstance(rows.inner, QuantRows)
            assert (rows.inner.bits, rows.inner.axis, rows.inner.group) == (4, "channel", 32)
        assert layer.nbytes == 2 * (H * T * D // 2 + 4 * H * 3 * D)  # 96 / 32 = 3 groups a channel
    assert kvstack.generate(model, cache, question, max_new_tokens=3).shape == (3,)


def test_values_can_take_their_own_axis(setup):
    """``vaxis=token``: keys in channel groups (32 tokens), values in token groups (capped at head_dim)."""
    model, ids, question, _ = setup
    cache = kvstack.compress(model, ids, "int4:vaxis=token")
    for layer in cache.layers:
        assert (layer.keys.inner.axis, layer.values.inner.axis) == ("channel", "token")
        keys = H * T * D // 2 + 4 * H * 3 * D  # 3 groups of 32 tokens per channel
        values = H * T * D // 2 + 4 * H * T * (D // 16)  # one group per token (g32 capped at head_dim 16)
        assert layer.nbytes == keys + values
    assert kvstack.generate(model, cache, question, max_new_tokens=3).shape == (3,)
    with pytest.raises(RecipeError, match="vaxis"):
        kvstack.compress(model, ids, "int4:vaxis=diagonal")


def test_values_can_take_their_own_bits(setup):
    """``vbits=2``: 4-bit channel-group keys, 2-bit per-token values: bytes exact, error within each width's step."""
    model, ids, question, _ = setup
    full = kvstack.compress(model, ids, "identity")
    cache = kvstack.compress(model, ids, "int4:vbits=2,vaxis=token,norot")
    for lf, layer in zip(full.layers, cache.layers, strict=True):
        assert (layer.keys.bits, layer.values.bits) == (4, 2)
        keys = H * T * D // 2 + 4 * H * 3 * D  # 3 groups of 32 tokens per channel
        values = H * T * D // 4 + 4 * H * T * (D // 16)  # four codes a byte; one group per token (head_dim 16)
        assert layer.nbytes == keys + values
        (kf, vf), (kq, vq) = head_rows(lf), head_rows(layer)
        for x, y, bits, dim in [(a, b, 4, 0) for a, b in zip(kf, kq)] + [(a, b, 2, 1) for a, b in zip(vf, vq)]:
            x, y = x.double(), y.double()
            # a group's step is at most the range of its channel (keys) or token (values) over its levels
            step = (x.amax(dim, keepdim=True) - x.amin(dim, keepdim=True)) / (2**bits - 1)
            assert bool(((y - x).abs() <= 0.5 * step * 1.01 + 1e-3).all())
    assert kvstack.generate(model, cache, question, max_new_tokens=3).shape == (3,)
    for bad in ("int4:vbits=5", "int4:vbits=-2"):
        with pytest.raises(RecipeError, match="vbits"):
            kvstack.compress(model, ids, bad)


def test_kivi_recipe_bytes_and_generate(setup):
    model, ids, question, _ = setup
    cache = kvstack.compress(model, ids, "kivi:2,residual=16")
    old, vg = T - 16, 16  # value groups: g32 capped at head_dim 16
    quant_k = H * old * D // 4 + 4 * H * 3 * D  # ceil(80 / 32) = 3 key groups per head
    quant_v = H * old * D // 4 + 4 * H * old * (D // vg)
    dense = 2 * H * 16 * D * 4  # K and V residual in fp32 (the model's dtype)
    for layer in cache.layers:
        assert isinstance(layer.keys, SplitRows) and layer.nbytes == quant_k + quant_v + dense
    assert kvstack.generate(model, cache, question, max_new_tokens=3).shape == (3,)


def test_streaming_then_int4(setup):
    model, ids, question, _ = setup
    cache = kvstack.compress(model, ids, "streaming:sink=4,window=64 > int4:g32,token,norot")
    for layer in cache.layers:
        assert layer.lengths == (68, 68) and isinstance(layer.keys, QuantRows)
        assert layer.keys.group == 16  # g32 capped at head_dim
        assert layer.nbytes == layer_bytes(4, 68, 16, H * 68) + 68 * 4  # + shared int32 positions
    assert kvstack.generate(model, cache, question, max_new_tokens=3).shape == (3,)


def test_scoped_stage_overrides_quantizer(setup):
    model, ids, question, _ = setup
    cache = kvstack.compress(model, ids, "int4 > fp16@layer0")
    assert isinstance(cache.layers[0].keys, DenseRows) and cache.layers[0].keys.dtype == torch.float16
    assert isinstance(cache.layers[1].keys, HadamardRows) and cache.layers[1].keys.inner.bits == 4
    cache = kvstack.compress(model, ids, "int8@layers0-1 > int2")
    assert [layer.keys.bits for layer in cache.layers] == [8, 8]  # int2 is left no layers
    cache = kvstack.compress(model, ids, "int8@layer1 > int2")
    assert [layer.values.bits for layer in cache.layers] == [2, 8]
    cache = kvstack.compress(model, ids, "kivi:2,residual=8 > fp16@layer1")
    assert isinstance(cache.layers[0].keys, SplitRows) and isinstance(cache.layers[1].keys, DenseRows)
    assert kvstack.generate(model, cache, question, max_new_tokens=2).shape == (2,)


def test_eviction_after_channel_quantization_requantizes(setup):
    model, ids, question, _ = setup
    quant = kvstack.compress(model, ids, "int4:g16,channel,norot")
    cache = kvstack.compress(model, ids, "int4:g16,channel,norot > streaming:sink=4,window=30")
    for before, layer in zip(quant.layers, cache.layers, strict=True):
        assert isinstance(layer.keys, QuantRows) and layer.keys.axis == "channel"  # not dense floats
        assert layer.keys.segments == (34, 34)
        keep = torch.cat([torch.arange(4), torch.arange(T - 30, T)])
        rows = torch.cat([keep, T + keep])
        step = float(before.keys.scales.float().max())
        assert float((layer.keys.decode() - before.keys.decode()[rows]).abs().max()) <= step
    assert kvstack.generate(model, cache, question, max_new_tokens=2).shape == (2,)


def test_sliding_window_model_evicts_channel_quantized_rows(tiny_model, make_ids):
    # mistral_swa (window 16) drops rows from the compressed cache at every decoding step
    model = tiny_model("mistral_swa")
    cache = kvstack.compress(model, make_ids(40, seed=1), "int4:g8,channel,norot")
    out = kvstack.generate(model, cache, make_ids(3, seed=2), max_new_tokens=4)
    assert out.shape == (4,)


@pytest.mark.parametrize(
    ("recipe", "match"),
    [
        ("int5", r"unknown stage 'int5'.*int2, int3, int4, int8"),
        ("int4:g0", "positive"),
        ("int4:axis=diagonal", r"not a valid axis \(token or channel\)"),
        ("int4:sym=maybe", "boolean"),
        ("int4:bits=3", "no parameter 'bits'"),
        ("int8:g32,64", r"parameter .axis. got .64., which is not a valid axis"),
    ],
)
def test_bad_recipes(recipe, match):
    with pytest.raises(RecipeError, match=match):
        Recipe.parse(recipe)


def test_group_not_dividing_head_dim_is_a_clear_error(setup):
    model, ids, _, _ = setup
    with pytest.raises(RecipeError, match=r"group=12 does not divide head_dim=16.*\[1, 2, 4, 8, 16\]"):
        kvstack.compress(model, ids, "int4:token,g12")


def test_python_construction_is_validated():
    from kvstack.stages.quant.uniform import Int4, Int8

    with pytest.raises(RecipeError, match="axis"):
        Int4(axis="diagonal")
    with pytest.raises(RecipeError, match="sym"):
        Int4(sym="yes")
    assert Int8().sym is True and Int4().sym is False


def test_parsing_shorthands_and_spec_round_trip():
    stage = Recipe.parse("int3:g32,channel,sym").stages[0]
    assert (stage.bits, stage.group, stage.axis, stage.sym) == (3, 32, "channel", True)
    again = Recipe.parse(stage.spec()).stages[0]
    assert (again.group, again.axis, again.sym) == (32, "channel", True)
    assert Recipe.parse("int8:asym").stages[0].sym is False
    names = {row[0] for row in describe_stages()}
    assert {"int8", "int4", "int3", "int2", "kivi"} <= names
