"""The planner's bytes against what ``kvstack.compress`` really holds, for every registered stage.

One tiny Llama (4 layers, 2 KV heads of 64, fp32) and one context: for each stage of the
grammar's stage list (and a few stacks and the presets) the analytic estimate of
``kvstack.plan`` must be within 5% of ``cache.nbytes``, per layer and in total. A stage whose
bytes depend on the data (``RecipeEstimate.exact`` is False) must stay under its bound instead.
"""

from __future__ import annotations

import pytest
from plan_bytes import NEEDS_VALUE, assert_plan_matches

import kvstack
from kvstack.grammar import PRESETS, SPECS
from kvstack.plan import load_spec, parse_recipe
from kvstack.stack import REGISTRY, _load_builtin_stages

CONTEXT = 200
STACKS = (
    "snapkv:0.25 > int4",
    "streaming:sink=4,window=64 > int8",
    "svd:rank=8 > int4",
    "keydiff:0.5 > kivi:4,residual=32",
    "q2c:0.5 > kvquant:4",
    "int4:token,norot > fp16@layer0",
    "int4:sink=4,vaxis=token",
    "svd:rank=8,bits=4,target=k,rope=pre",
    "xkv:group=2,rank=32,bits=8",
    "cq:2,channels=2",
    "gear:2,rank=2,group=32",
    "h2o:0.3,sink=4",
    "snapkv:0.5 > kvquant:3,rope=pre",
    "snapkv:0.5 > svd:rank=8,rope=pre",
    "streaming:window=64,sink=0 > kvquant:3",
    "streaming:window=64,sink=4 > svd:rank=8,rope=pre",
    "streaming:window=64 > latent:rank=16",
    "snapkv:0.5,sink=4 > kvquant:3",
    "svd:0.9",
    "int4:vbits=2,vaxis=token",
    "surprisal:0.27,span=16 > int4:vbits=2,vaxis=token",
)


@pytest.fixture
def tiny(tiny_model, make_ids, tmp_path):
    """(model, its planner spec from its own config.json, context ids, question ids)."""
    model = tiny_model("llama", head_dim=64, num_hidden_layers=4)
    model.config.to_json_file(tmp_path / "config.json")
    return model, load_spec(str(tmp_path / "config.json")), make_ids(CONTEXT), make_ids(8, seed=1)


def _compare(tiny, recipe: str) -> None:
    model, spec, ids, question = tiny
    assert_plan_matches(kvstack.compress(model, ids, recipe=recipe, question_ids=question), recipe, spec, CONTEXT)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_stage_predicted_within_five_percent(tiny, name):
    _compare(tiny, NEEDS_VALUE.get(name, name))


@pytest.mark.parametrize("recipe", STACKS)
def test_stacks_predicted_within_five_percent(tiny, recipe):
    _compare(tiny, recipe)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_predicted_within_five_percent(tiny, preset):
    _compare(tiny, preset)


def test_every_registered_stage_is_in_the_test():
    _load_builtin_stages()
    assert set(REGISTRY) == set(SPECS)


def test_data_dependent_stages_say_so():
    assert not parse_recipe("fastgen").exact
    assert not parse_recipe("minicache").exact
    assert not parse_recipe("svd:0.95").exact
    assert parse_recipe("svd:rank=8 > int4").exact
    assert "data-dependent" in parse_recipe("svd:energy=0.9").explain()[0]
    # kvquant keeps position 0 in fp16, which snapkv (sink=0) may have evicted in some heads
    assert not parse_recipe("snapkv:0.5 > kvquant:3").exact
    assert parse_recipe("snapkv:0.5,sink=1 > kvquant:3").exact
