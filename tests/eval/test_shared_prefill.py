"""One prefill shared by several recipes gives exactly the caches kvstack.compress builds alone."""

import pytest
import torch

import kvstack
from kvstack.api import compress_many
from kvstack.errors import BudgetError, InputError

RECIPES = [
    "identity", "int4", "snapkv:0.5,window=4", "q2c:0.5", "h2o:0.5", "streaming:sink=2,window=8 > int8",
    "tova:0.25", "kivi:2,residual=8",
]


def assert_same_cache(a, b):
    assert a.nbytes == b.nbytes and a.recipe == b.recipe and len(a.layers) == len(b.layers)
    for x, y in zip(a.layers, b.layers):
        assert x.lengths == y.lengths
        assert torch.equal(x.row_positions(), y.row_positions())
        assert torch.equal(x.keys.decode(), y.keys.decode()) and torch.equal(x.values.decode(), y.values.decode())


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_every_recipe_matches_its_own_compress(tiny_model, make_ids, arch):
    model = tiny_model(arch)
    ctx, q = make_ids(40, seed=1), make_ids(6, seed=2)
    recipes = [kvstack.parse_recipe(r) for r in RECIPES]
    got = list(compress_many(model, ctx, recipes, q))
    assert [r.text for r, _ in got] == RECIPES
    for recipe, cache in got:
        alone = kvstack.compress(model, ctx, recipe.text, question_ids=q)
        assert_same_cache(cache, alone)
        assert cache.stats["shared_prefill"] == len(RECIPES)


def test_recipes_that_cannot_run_yield_their_error(tiny_model, make_ids):
    model = tiny_model("llama")
    recipes = [kvstack.parse_recipe(r) for r in ("q2c:0.5", "snapkv:0.5,sink=16", "int8", "streaming:window=100")]
    got = dict((r.text, c) for r, c in compress_many(model, make_ids(20), recipes, None))
    assert isinstance(got["q2c:0.5"], InputError) and "no question" in str(got["q2c:0.5"])
    assert isinstance(got["int8"], kvstack.KVCache)
    assert isinstance(got["snapkv:0.5,sink=16"], BudgetError)  # 16 sinks do not fit in half of 20 tokens
    assert "must always be kept" in str(got["snapkv:0.5,sink=16"])
    # a window longer than the context keeps everything; only that recipe carries the note
    assert got["streaming:window=100"].tokens_kept == got["int8"].tokens_kept
    assert "everything kept" in got["streaming:window=100"].stats["notes"][0]
    assert got["int8"].stats["notes"] == []
