"""Bad low-rank parameters raise typed errors that say what to do, before or while compressing."""

from __future__ import annotations

import pytest
import torch

import kvstack
from kvstack.errors import BudgetError, RecipeError
from kvstack.stack import Recipe


@pytest.mark.parametrize(
    "text, error, phrase",
    [
        ("svd", RecipeError, "rank=R .* or energy=E"),
        ("svd:rank=4,energy=0.9", RecipeError, "not both"),
        ("svd:energy=1.5", BudgetError, "energy=1.5 must be in \\(0, 1\\]"),
        ("svd:energy=-0.2", BudgetError, "energy=-0.2 must be in \\(0, 1\\]"),
        ("svd:rank=-3", BudgetError, "rank=-3 must be a whole number >= 1"),
        ("svd:rank=8,bits=5", RecipeError, "bits=5 is not a packed width"),
        ("svd:rank=8,bits=4,qgroup=0", RecipeError, "qgroup=0"),
        ("svd:rank=8,target=q", RecipeError, "target='q'"),
        ("svd:rank=8,rope=mid", RecipeError, "rope='mid'"),
        ("latent:energy=0", RecipeError, "rank=R .* or energy=E"),
        ("latent:rank=4,sink=-1", RecipeError, "sink=-1 must be >= 0"),
        ("minicache:sink=-2", RecipeError, "sink=-2"),
        ("latent:rank=x", RecipeError, "not a valid int"),
    ],
)
def test_bad_parameters(text, error, phrase):
    with pytest.raises(error, match=phrase):
        Recipe.parse(text)


def test_shorthands_parse_as_rank_and_energy():
    svd = Recipe.parse("svd:16").stages[0]
    assert (svd.rank, svd.energy) == (16, 0.0)
    svd = Recipe.parse("svd:0.95").stages[0]
    assert (svd.rank, svd.energy) == (0, 0.95)
    assert Recipe.parse("svd:rank=8,bits=4").stages[0].spec() == (
        "svd:rank=8,energy=0.0,target=kv,rope=post,sink=4,bits=4,qgroup=64,basis="
    )


@torch.no_grad()
def test_rank_larger_than_head_dim_is_a_budget_error(tiny_model, make_ids):
    model = tiny_model("llama")  # head_dim 16
    with pytest.raises(BudgetError, match="rank=17 is larger than head_dim=16.*pick rank <= 16"):
        kvstack.compress(model, make_ids(20), "svd:rank=17")
    with pytest.raises(BudgetError, match="larger than 2 x kv_heads x head_dim=64"):
        kvstack.compress(model, make_ids(20), "latent:rank=65")


@torch.no_grad()
def test_pre_rope_without_rotary_tables_says_what_to_do(tiny_model, make_ids):
    # kvstack.compress captures the tables (hf/prefill.py); a driver that does not gets this error
    from kvstack.hf.model import model_info
    from kvstack.hf.prefill import prefill
    from kvstack.stack import StageContext

    model = tiny_model("llama")
    info = model_info(model)
    full = prefill(model, info, make_ids(20), frozenset()).cache
    ctx = StageContext(info.num_query_heads, info.num_kv_heads, info.head_dim, info.num_layers)
    with pytest.raises(RecipeError, match="rotary tables.*use rope=post"):
        Recipe.parse("svd:rank=4,rope=pre").apply(full, ctx)
