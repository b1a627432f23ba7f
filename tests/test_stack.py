"""Recipe grammar, stage registry, scoping and typed errors (no model needed)."""

import pytest
import torch

from kvstack.errors import BudgetError, RecipeError
from kvstack.kv import DenseRows, KVCache, KVLayer
from kvstack.stack import Recipe, StageContext, describe_stages, parse_stage


def test_parse_positional_keyword_shorthand_and_scope():
    s = parse_stage("streaming:128,sink=2")
    assert (s.window, s.sink, s.decode) == (128, 2, False)
    s = parse_stage("int8:g32@layers1-3")
    assert s.group == 32 and s.layers == {1, 2, 3}
    s = parse_stage("fp16@layer0")
    assert s.layers == {0}
    r = Recipe.parse(" streaming:window=8 > int8 > fp16@layer0 ")
    assert [st.name for st in r.stages] == ["streaming", "int8", "fp16"]


@pytest.mark.parametrize(
    "text, phrase",
    [
        ("nosuch:1", "unknown stage 'nosuch'"),
        ("streaming:window=abc", "not a valid int"),
        ("streaming:bogus=1", "has no parameter 'bogus'"),
        ("int8 >  > fp16", "empty stage"),
        ("int8@layerz", "bad layer scope"),
        ("int8@layers3-1", "is empty"),
        ("streaming:1,2,true,4", "too many values"),
        ("", "empty recipe"),
        ("int8:g0", "positive"),
    ],
)
def test_bad_recipes_raise_typed_errors_that_say_what_to_do(text, phrase):
    with pytest.raises(RecipeError, match=phrase):
        Recipe.parse(text)


def test_unknown_stage_lists_known_ones():
    with pytest.raises(RecipeError) as exc:
        Recipe.parse("snapkvv:0.5")
    assert "streaming" in str(exc.value) and "int8" in str(exc.value)


@pytest.mark.parametrize("text", ["streaming:window=-1", "streaming:window=0,sink=0", "streaming:sink=-4"])
def test_negative_or_empty_budgets_are_budget_errors(text):
    with pytest.raises(BudgetError):
        Recipe.parse(text)


def _cache(layers=3, heads=2, tokens=10, dim=8):
    torch.manual_seed(0)
    ls = [KVLayer.from_dense(torch.randn(heads, tokens, dim), torch.randn(heads, tokens, dim)) for _ in range(layers)]
    return KVCache(layers=ls, context_ids=torch.arange(tokens, dtype=torch.int32), dense_dtype=torch.float32,
                   dense_layout=[(heads, dim, None)] * layers)


def _ctx():
    return StageContext(num_query_heads=4, num_kv_heads=2, head_dim=8, num_layers=3)


def test_scoped_stage_overrides_its_family_on_its_layers():
    cache = Recipe.parse("int8 > fp16@layer0").apply(_cache(), _ctx())
    assert cache.layers[0].keys.dtype == torch.float16
    assert isinstance(cache.layers[0].keys, DenseRows)
    # the other layers hold int8 codes: 1 byte per element plus fp16 scales, not floats
    for layer in cache.layers[1:]:
        assert not isinstance(layer.keys, DenseRows)
        assert layer.keys.nbytes == 2 * 10 * 8 + 2 * 10 * 2
    assert cache.recipe == "int8 > fp16@layer0"


def test_scope_beyond_the_model_is_an_error():
    with pytest.raises(RecipeError, match="names layer 7"):
        Recipe.parse("int8@layer7").apply(_cache(), _ctx())


@pytest.mark.parametrize(
    "text", ["streaming:sink=4,window=8", "streaming:window=512 > int8", "streaming:sink=4,window=6"]
)
def test_a_window_covering_the_context_keeps_everything_with_a_note(text):
    full = _cache()
    cache = Recipe.parse(text).apply(full, _ctx())
    assert cache.tokens_kept == full.tokens_kept == 3 * 2 * 10
    for got, want in zip(cache.layers, full.layers):
        assert torch.equal(got.row_positions(), want.row_positions())
    assert cache.stats["notes"] == [
        Recipe.parse(text).stages[0].budget_note(10)
    ] and "everything kept" in cache.stats["notes"][0]
    assert "notes" not in full.stats  # the input cache is left as it was


def test_a_window_inside_the_context_still_evicts_without_a_note():
    cache = Recipe.parse("streaming:sink=2,window=5").apply(_cache(), _ctx())
    assert all(layer.lengths == (7, 7) for layer in cache.layers)
    assert cache.stats["notes"] == []
    recipe = Recipe.parse("streaming:sink=2,window=5")
    assert recipe.notes(8) == []
    assert recipe.notes(7) == [
        "streaming keeps sink+window=7 tokens and the context has 7: everything kept, nothing evicted"
    ]


def test_kivi_residual_covering_the_context_is_noted():
    assert Recipe.parse("kivi:2,residual=128").notes(100) == [
        "kivi keeps the last residual=128 tokens dense and the context has 100: nothing quantized"
    ]
    assert Recipe.parse("kivi:2,residual=128").notes(129) == []


def test_every_stage_is_described():
    names = {row[0] for row in describe_stages()}
    assert {"identity", "streaming", "int8", "fp16", "bf16", "fp32"} <= names
    assert all(row[2] for row in describe_stages())  # one-line summary for each


def test_scoped_spec_round_trips_through_the_parser():
    r = Recipe.parse("int8:g32@layers1-2 > fp16@layer0")
    again = Recipe([parse_stage(s.spec()) for s in r.stages])
    assert [(s.name, s.layers, getattr(s, "group", None)) for s in again.stages] == [
        ("int8", {1, 2}, 32),
        ("fp16", {0}, None),
    ]


def test_two_quantizers_on_one_layer_are_refused():
    with pytest.raises(RecipeError, match="both quantize layer 0"):
        Recipe.parse("int8 > int8:g32").apply(_cache(), _ctx())
    with pytest.raises(RecipeError, match="both quantize layer 1"):
        Recipe.parse("int8@layers0-1 > fp16@layers1-2").apply(_cache(), _ctx())
