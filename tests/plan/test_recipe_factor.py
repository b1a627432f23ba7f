"""Analytic recipe estimates against hand counts (llama-3.1-8b: 32 layers x 16 head vectors of
128 elements per token; bf16 = 4096 bytes per token per layer)."""

from __future__ import annotations

from fractions import Fraction

import pytest

from kvstack.errors import BudgetError, RecipeError
from kvstack.plan import load_spec, parse_recipe, plan

K128 = 131072
VECTORS = 16  # 8 K + 8 V vectors of 128 per token per layer


@pytest.fixture
def llama():
    return load_spec("llama-3.1-8b")


def per_layer_bytes(p):
    return [layer.bytes for layer in p.layers]


def test_selection_keeps_a_fraction(llama):
    p = plan(llama, K128, recipe="snapkv:0.25")
    assert {layer.tokens_held for layer in p.layers} == {32768}
    # bf16 rows (4096 B) + kvstack's int32 position tag per kept token per KV head (8 x 4 B)
    assert p.total_bytes == 32 * 32768 * (4096 + 8 * 4) == 4_328_521_728


def test_selection_rounds_half_up_keeping_at_least_one(llama):
    # kvstack keeps round-half-up(fraction x tokens), at least 1, per head
    assert plan(llama, 10, recipe="h2o:0.3").layers[0].tokens_held == 3
    assert plan(llama, 15, recipe="h2o:0.3").layers[0].tokens_held == 5  # 4.5 -> 5
    assert plan(llama, 11, recipe="h2o:0.3").layers[0].tokens_held == 3  # 3.3 -> 3
    assert plan(llama, 1, recipe="knorm:0.25").layers[0].tokens_held == 1


def test_selection_fraction_default_and_keyword(llama):
    assert plan(llama, 100, recipe="snapkv").layers[0].tokens_held == 50  # kvstack default 0.5
    recipe = "snapkv:fraction=0.1,window=32,kernel=7"
    assert plan(llama, 100, recipe=recipe).layers[0].tokens_held == 10


def test_snapkv_then_int4(llama):
    p = plan(llama, K128, recipe="snapkv:0.25 > int4")
    # int4 (channel groups of 32 tokens), scale+zero: 128 x 4 + 128 x 32 / 32 = 640 bits per vector
    # plus one int32 position tag per kept token per KV head
    assert p.layers[0].bits_per_token == VECTORS * 640 + 8 * 32
    assert p.total_bytes == 32 * 32768 * (VECTORS * 640 // 8 + 8 * 4) == 1_375_731_712


def test_streaming_then_int8(llama):
    p = plan(llama, K128, recipe="streaming:sink=4,window=512 > int8")
    assert {layer.tokens_held for layer in p.layers} == {516}
    # int8 is symmetric in kvstack: 128 x 8 + 2 groups x 16-bit scale = 1056 bits per vector;
    # streaming keeps the same tokens in every head, so one int32 position tag per token
    assert p.total_bytes == 32 * 516 * (VECTORS * 1056 // 8 + 4) == 34_939_392


def test_streaming_defaults_and_positional_order(llama):
    assert plan(llama, K128, recipe="streaming").layers[0].tokens_held == 512 + 4
    assert plan(llama, K128, recipe="streaming:100,2").layers[0].tokens_held == 102  # window, sink


@pytest.mark.parametrize(
    ("recipe", "bits_per_vector"),
    [
        ("int4:sym", 128 * 4 + 128 * 16 // 32),  # default: channel groups of 32 tokens
        ("int4:32", 128 * 4 + 4 * 32),  # positional order: group, axis, sym
        ("int4:32,channel,sym", 128 * 4 + 128 * 16 // 32),
        ("int4:g32", 128 * 4 + 4 * 32),
        ("int4:group=128", 128 * 4 + 32),
        ("int4:g32,sym", 128 * 4 + 4 * 16),
        ("int2", 128 * 2 + 2 * 32),
        ("int3", 128 * 3 + 2 * 32),
        ("int8:asym", 128 * 8 + 2 * 32),
        ("int4:token,vbits=2", 128 * 3 + 4 * 32),  # keys 4 bits, values 2: half the vectors each; groups of 32
        ("kivi:2", 128 * 2 + 4 * 32),  # fp16 scale + zero per 32 elements
        ("kivi", 128 * 2 + 4 * 32),  # kvstack's default: 2 bits
        ("kivi:4", 128 * 4 + 4 * 32),
        ("cq:1", 128),
        ("cq:2", 256),
        ("fp16", 128 * 16),
        ("identity", 128 * 16),
    ],
)
def test_quantizer_bits(llama, recipe, bits_per_vector):
    assert plan(llama, 1, recipe=recipe).layers[0].bits_per_token == VECTORS * bits_per_vector


def test_kivi_keeps_residual_tokens_in_the_cache_dtype(llama):
    layer = plan(llama, 1000, recipe="kivi:2").layers[0]
    # 872 quantized tokens: 2048 elements x 2 bits; values per token: 8 vectors x 4 groups
    # x 32 bits; keys per channel: ceil(872 / 32) = 28 groups x 1024 channels x 32 bits;
    # the last 128 tokens stay bf16 (2048 x 16 bits)
    bits = 872 * 2048 * 2 + 872 * 8 * 4 * 32 + 28 * 1024 * 32 + 128 * 2048 * 16
    assert layer.bytes == bits // 8 == 1_197_056
    # no residual: ceil(1000 / 32) = 32 key groups per channel
    bits = 1000 * 2048 * 2 + 1000 * 8 * 4 * 32 + 32 * 1024 * 32
    assert plan(llama, 1000, recipe="kivi:2,residual=0").layers[0].bytes == bits // 8
    assert plan(llama, 100, recipe="kivi:4").layers[0].bytes == 100 * 4096  # all recent


def test_recipe_groups_must_tile_head_dim_as_in_kvstack():
    phi3 = load_spec("phi-3-mini")  # head_dim 96: kvstack refuses per-token g64
    with pytest.raises(RecipeError, match="does not divide head_dim=96"):
        plan(phi3, 10, recipe="int4:g64,token")
    # g32: 3 groups per 96-dim vector, 64 vectors (32 K + 32 V) per token per layer
    assert plan(phi3, 10, recipe="int4:g32,token").layers[0].bytes == 10 * 64 * (96 * 4 + 3 * 32) // 8
    # the default int4 groups tokens of a channel: any head_dim; one group of 10 tokens per channel
    assert plan(phi3, 10, recipe="int4").layers[0].bytes == (10 * 64 * 96 * 4 + 64 * 96 * 32) // 8


def test_channel_axis_amortizes_scales_across_tokens():
    gpt2 = load_spec("gpt2")  # 12 heads of 64: a token-axis group is capped at 64
    token = plan(gpt2, 1, recipe="int4:g128,token").layers[0].bits_per_token
    channel = plan(gpt2, 1, recipe="int4:g128,channel").layers[0].bits_per_token
    assert token == 24 * (64 * 4 + 32)
    assert channel == 24 * (64 * 4 + 64 * 32 / 128)


def test_kvquant_counts_codes_zero_scale_codebooks_outliers_and_sink(llama):
    layer = plan(llama, 100, recipe="kvquant:3").layers[0]
    # sink=1: 99 tokens x 8 heads = 792 rows per part, 128 codes of 3 bits = 48 bytes each
    codes = 792 * 48
    outliers = round(0.01 * 792 * 128) * (4 + 2)  # int32 index + fp16 value
    books = 8 * 8 * 2  # fp16 codebook of 2**3 levels per head, fitted on the cache
    keys = codes + 8 * 128 * 2 * 2 + books + outliers  # fp16 zero + scale per head channel
    values = codes + 792 * 2 * 2 + books + outliers  # fp16 zero + scale per row
    sink = 8 * 256 * 2  # the first token's 8 K + 8 V vectors of 128, kept in fp16
    assert layer.bytes == keys + values + sink == 99_816
    calibrated = plan(llama, 100, recipe="kvquant:3,calibration=books.pt").layers[0]
    assert calibrated.bytes == layer.bytes - 2 * books  # a calibrated codebook is not counted


def test_gear_counts_its_error_factors_and_outliers(llama):
    layer = plan(llama, 1000, recipe="gear:4").layers[0]
    rows = 8 * 1000
    codes = rows * 128 * 4 // 8
    factors = (rows + 8 * 128) * 4 * 2  # fp16 A [rows, 4] and B [128, 4] per head
    outliers = round(0.01 * rows * 128) * 6
    keys = codes + 8 * 16 * 128 * 4 + factors + outliers  # ceil(1000/64) = 16 groups per head channel
    values = codes + rows * 2 * 4 + factors + outliers  # 2 groups of 64 channels per row
    assert layer.bytes == keys + values == 1_420_800
    # marginal cost: 4-bit codes + 4 fp16 factor entries + 1% outliers + amortized scales per vector
    assert layer.bits_per_token == 16 * (512 + 64 + Fraction("61.44") + 64)


def test_cast_stage_changes_fp32_cache():
    p = plan(load_spec("gpt2"), 10, recipe="fp16")
    assert p.total_bytes == 12 * 10 * 12 * 128 * 2  # fp32 config, stored as fp16


def test_scoped_stage_overrides_unscoped_of_same_family(llama):
    p = plan(llama, 10, recipe="int4:g64,token > fp16@layer0")
    assert p.layers[0].bytes == 10 * 4096  # layer 0 stays 16-bit
    assert p.layers[1].bytes == 10 * VECTORS * 576 // 8


def test_scoped_selection_only_on_its_layers(llama):
    p = plan(llama, 100, recipe="snapkv:0.5@layers0-1")
    assert [layer.tokens_held for layer in p.layers[:3]] == [50, 50, 100]


def test_selection_applies_after_sliding_window():
    p = plan(load_spec("gemma-3-27b"), K128, recipe="snapkv:0.25")
    assert {layer.kind: layer.tokens_held for layer in p.layers} == {
        "sliding": 256,
        "global": 32768,
    }


def test_shared_layers_stay_empty_under_recipes():
    p = plan(load_spec("gemma-3n-e2b"), 1000, recipe="snapkv:0.5 > int4")
    assert all(layer.bytes == 0 for layer in p.layers if layer.kind == "shared")


def test_unknown_stage_lists_known_ones():
    with pytest.raises(RecipeError, match="'zip'") as info:
        parse_recipe("zip:0.5")
    assert "snapkv" in str(info.value) and "streaming" in str(info.value)


@pytest.mark.parametrize(
    "recipe",
    [
        "",
        "snapkv:1000",
        "snapkv:0",
        "snapkv:1.5",
        "snapkv:x",
        "int4 >",
        "kivi:3",
        "cq:4",
        "snapkv:0.5@layers3-1",
        "int4@layerx",
        "int4:bits=3",
        "streaming:sink=0,window=0",
        "streaming:budget=3",
        "fp16:1",
        "snapkv:fraction=0.5,0.2",
        "int4:g64,diagonal",
        "int4:axis=diagonal",
        "int4:64,token,true,9",
        "int4:vaxis=diagonal",
        "int4:vbits=5",
        "kivi:2,bits=3",
    ],
)
def test_bad_recipes(recipe):
    with pytest.raises(RecipeError):
        parse_recipe(recipe)


def test_scope_beyond_model_layers(llama):
    with pytest.raises(RecipeError, match="32 layers"):
        plan(llama, 10, recipe="int4@layers30-40")


def test_explain_lines():
    lines = parse_recipe("streaming:sink=4,window=512 > int8").explain()
    assert "516" in lines[0] and "8.25 bits" in lines[1]


@pytest.mark.parametrize(
    ("recipe", "error", "match"),
    [
        ("svd:rank=200", BudgetError, "larger than head_dim=128"),
        ("latent:rank=5000", BudgetError, "joint row width=2048"),
        ("cq:1,channels=3", RecipeError, "does not divide head_dim=128"),
        ("gear:4@phi-3-mini", RecipeError, "group=64 does not divide head_dim=96"),
    ],
)
def test_stages_that_do_not_fit_the_geometry_are_refused(llama, recipe, error, match):
    recipe, _, model = recipe.partition("@phi")
    spec = load_spec("phi" + model) if model else llama
    with pytest.raises(error, match=match):
        plan(spec, 100, recipe=recipe)


def test_every_stage_and_preset_parses(llama):
    # stages the planner used to refuse (issue 21): low rank, cross-layer, fastgen, the presets
    for recipe in ("svd:rank=16", "latent:rank=64", "minicache", "xkv:rank=64", "fastgen", "best:16x", "qa:4x"):
        assert plan(llama, 1000, recipe=recipe).total_bytes > 0


def test_report_says_when_the_estimate_is_a_bound(llama):
    from kvstack.plan.render import render_plan

    assert "upper bound" in render_plan(plan(llama, 1000, recipe="fastgen"))
    assert "upper bound" not in render_plan(plan(llama, 1000, recipe="snapkv:0.5 > int4"))


@pytest.mark.parametrize("recipe", ["snapkv:0.5 > latent:rank=64", "h2o:0.5 > xkv:rank=64"])
def test_shared_vectors_after_per_head_selection_are_refused_as_in_kvstack(llama, recipe):
    with pytest.raises(RecipeError, match="different tokens in different heads"):
        plan(llama, 1000, recipe=recipe)
    assert plan(llama, 1000, recipe="streaming:window=512 > " + recipe.split(" > ")[1]).total_bytes > 0
