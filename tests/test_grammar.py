"""One grammar, one stage list: ``kvstack.stack`` and the torch-free planner read recipes the same way."""

from __future__ import annotations

import subprocess
import sys

import pytest

import kvstack
from kvstack.errors import BudgetError, RecipeError
from kvstack.grammar import PRESETS, SPECS, Param, parse_stage
from kvstack.grammar.params import AXES, PACKED_BITS
from kvstack.grammar.select import SCORED
from kvstack.plan import load_spec, parse_recipe, plan
from kvstack.stack import REGISTRY, Recipe, Stage, _load_builtin_stages, register

# a value each stage needs to run at all (the others run on their defaults)
NEEDS_VALUE = {"svd": "svd:rank=8", "latent": "latent:rank=16", "xkv": "xkv:rank=16"}


@pytest.mark.parametrize("module", ["kvstack.grammar", "kvstack.plan"])
def test_importing_the_grammar_and_the_planner_does_not_import_torch(module):
    code = f"import {module}, sys; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_registry_and_grammar_name_the_same_stages():
    _load_builtin_stages()
    assert set(REGISTRY) == set(SPECS)
    for name, cls in REGISTRY.items():
        spec = SPECS[name]
        assert cls.grammar_spec is spec
        assert (cls.name, cls.family, cls.summary, cls.params) == (spec.name, spec.family, spec.summary, spec.params)


def test_based_stages_accept_exactly_the_score_and_keep_methods():
    from kvstack.stages.select.base import ScoredSelect
    from kvstack.stages.select.based import BasedSelect

    _load_builtin_stages()
    methods = {n for n, c in REGISTRY.items() if issubclass(c, ScoredSelect) and not issubclass(c, BasedSelect)}
    assert set(SCORED) == methods


def test_grammar_constants_match_the_containers():
    from kvstack.rows.pack import SUPPORTED_BITS
    from kvstack.rows.quant import AXES as ROW_AXES

    assert PACKED_BITS == SUPPORTED_BITS and AXES == ROW_AXES


def test_a_users_own_stage_is_declared_when_registered_and_the_planner_says_it_cannot_size_it():
    class Mine(Stage):
        name, family, summary = "mine_test_stage", "misc", "a user's stage"

    try:
        register(Mine)
        assert SPECS["mine_test_stage"].summary == "a user's stage" and REGISTRY["mine_test_stage"] is Mine
        assert Recipe.parse("mine_test_stage").stages[0].name == "mine_test_stage"
        with pytest.raises(RecipeError, match="no size model for the user stage 'mine_test_stage'"):
            plan(load_spec("llama-3.1-8b"), 4096, recipe="mine_test_stage")

        class Again(Stage):
            name, family, summary = "mine_test_stage", "misc", "the same name"

        with pytest.raises(RuntimeError, match="declared twice"):
            register(Again)
    finally:
        REGISTRY.pop("mine_test_stage", None)
        SPECS.pop("mine_test_stage", None)
    with pytest.raises(RuntimeError, match="has no name"):
        register(type("Nameless", (Stage,), {}))
    with pytest.raises(RuntimeError, match="no stage 'nope'"):
        type("Nope", (Stage,), {}, grammar="nope")


@pytest.mark.parametrize("name", sorted(SPECS))
def test_planner_accepts_every_stage(name):
    recipe = NEEDS_VALUE.get(name, name)
    assert plan(load_spec("llama-3.1-8b"), 4096, recipe=recipe).total_bytes > 0


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_planner_accepts_every_preset(preset):
    estimate = parse_recipe(preset)
    assert [s.name for s in estimate.stages] == [s.name for s in kvstack.parse_recipe(preset).stages]
    assert plan(load_spec("llama-3.1-8b"), 4096, recipe=estimate).total_bytes > 0


@pytest.mark.parametrize(
    "recipe",
    ["kivi:3", "kivi:2,sink=-4", "int4:sink=-1",
     "gear:5", "cq:2,channels=3", "svd", "svd:rank=4,energy=0.9", "critical:0.5,base=merge",
     "q2c:0.5,agg=mean", "int4:axis=diagonal", "snapkv:0.5,kernel=4", "fastgen:local=1.5", "xkv:rank=8,group=0",
     "minicache:t=2", "kvquant:3,rope=sideways", "zip:0.5", "int4:g64,diagonal", "snapkv:fraction=0.5,0.2"],
)
def test_stack_and_planner_refuse_a_bad_recipe_with_the_same_message(recipe):
    with pytest.raises((RecipeError, BudgetError)) as stack_error:
        kvstack.parse_recipe(recipe)
    with pytest.raises(RecipeError) as plan_error:
        parse_recipe(recipe)
    assert str(plan_error.value) == str(stack_error.value)


def test_bound_values_fill_defaults_and_read_as_attributes():
    bound = parse_stage("int4:g32,sym@layers2-3")
    assert (bound.group, bound.sym, bound.axis, bound.layers) == (32, True, "channel", (2, 3))
    assert bound.values == {**SPECS["int4"].defaults(), "group": 32, "sym": True}
    with pytest.raises(AttributeError):
        _ = bound.nothing


def test_param_reports_the_kind_it_wanted():
    with pytest.raises(RecipeError, match="not a valid int"):
        Param("window", int, 32, "recent tokens").parse("snapkv", "many")
