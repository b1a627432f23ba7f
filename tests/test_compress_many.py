"""kvstack.compress_many: the public one-prefill-many-recipes entry point of kvstack.api.

Why: it shares compress's steps, so each cache must be exactly the one compress builds with that
recipe alone (tensors, positions, bytes, fingerprint) - including stages whose captures come from
providers (surprisal's token NLL, KVzip's reconstruction pass, CriticalKV's o_proj) - and everything
checkable without the model (recipes, ids, context window) must fail when it is called, before the
model runs a single forward pass.
"""

from __future__ import annotations

import pytest
import torch

import kvstack
from kvstack.api import compress_many
from kvstack.errors import InputError, RecipeError

RECIPES = [
    "identity", "snapkv:0.5,window=4 > int4", "q2c:0.5", "surprisal:0.5,span=2", "kvzip:0.5",
    "critical:0.5", "svd:rank=4 > int8", "fp16@layer0 > int4",
]


def forward_calls(model) -> list[int]:
    """A counter of the model's forward passes (a real hook on the real model)."""
    calls: list[int] = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


def assert_same_cache(a: kvstack.KVCache, b: kvstack.KVCache) -> None:
    assert (a.recipe, a.nbytes, a.tokens_kept, a.model_fingerprint) == (b.recipe, b.nbytes, b.tokens_kept,
                                                                        b.model_fingerprint)
    for x, y in zip(a.layers, b.layers, strict=True):
        assert x.lengths == y.lengths
        assert torch.equal(x.row_positions(), y.row_positions())
        assert torch.equal(x.keys.decode(), y.keys.decode())
        assert torch.equal(x.values.decode(), y.values.decode())


def test_each_cache_is_exactly_compress_alone(tiny_model, make_ids):
    model = tiny_model("llama")
    ctx, q = make_ids(48, seed=3), make_ids(5, seed=4)
    got = list(compress_many(model, ctx, RECIPES, q))  # strings and Recipe objects both work
    assert [r.text for r, _ in got] == RECIPES
    for recipe, cache in got:
        assert isinstance(cache, kvstack.KVCache), f"{recipe.text}: {cache!r}"
        assert_same_cache(cache, kvstack.compress(model, ctx, recipe.text, question_ids=q))
        assert cache.stats["shared_prefill"] == len(RECIPES)
    assert kvstack.compress_many is compress_many


def test_one_prefill_serves_every_recipe(tiny_model, make_ids):
    model = tiny_model("llama")
    calls = forward_calls(model)
    recipes = [kvstack.parse_recipe(r) for r in ("int8", "snapkv:0.5,window=4", "streaming:sink=2,window=8")]
    list(compress_many(model, make_ids(40), recipes, chunk_size=1024))
    shared = len(calls)
    calls.clear()
    kvstack.compress(model, make_ids(40), "int8")
    assert shared == len(calls) > 0  # the three recipes cost the forward passes of one compress


@pytest.mark.parametrize("recipes", [["int8", "int9"], ["snapkv:0.5", "snapkv:window=-1"], ["nosuchstage"]])
def test_a_bad_recipe_is_a_recipe_error_before_any_prefill(tiny_model, make_ids, recipes):
    model = tiny_model("llama")
    calls = forward_calls(model)
    with pytest.raises(RecipeError):
        compress_many(model, make_ids(20), recipes)  # raised by the call itself, not when iterated
    assert calls == []


@pytest.mark.parametrize(
    "ids, recipes, match",
    [
        ("some text", ["int8"], "must be token ids"),
        (list(range(3, 23)), "int8", "list of recipes"),  # one recipe string, not a list
        (list(range(3, 23)), "Recipe", "list of recipes"),  # one Recipe object, not a list
    ],
)
def test_bad_input_is_an_input_error_before_any_prefill(tiny_model, ids, recipes, match):
    model = tiny_model("llama")
    calls = forward_calls(model)
    recipes = kvstack.parse_recipe("int8") if recipes == "Recipe" else recipes
    with pytest.raises(InputError, match=match):
        compress_many(model, ids, recipes)
    assert calls == []


def test_a_context_beyond_the_window_fails_before_any_prefill(tiny_model, make_ids):
    model = tiny_model("llama")
    calls = forward_calls(model)
    limit = model.config.max_position_embeddings
    with pytest.raises(InputError, match="handles at most"):
        compress_many(model, make_ids(limit + 1), ["int8"])
    assert calls == []


def test_no_question_yields_the_error_for_query_aware_recipes_only(tiny_model, make_ids):
    model = tiny_model("llama")
    got = dict((r.text, c) for r, c in compress_many(model, make_ids(20), ["q2c:0.5", "int8"], torch.tensor([])))
    assert isinstance(got["q2c:0.5"], InputError) and "no question" in str(got["q2c:0.5"])
    assert_same_cache(got["int8"], kvstack.compress(model, make_ids(20), "int8"))


def test_only_query_aware_recipes_without_a_question_run_no_prefill(tiny_model, make_ids):
    model = tiny_model("llama")
    calls = forward_calls(model)
    got = list(compress_many(model, make_ids(20), ["q2c:0.5"]))
    assert isinstance(got[0][1], InputError) and calls == []
    assert list(compress_many(model, make_ids(20), [])) == [] and calls == []
