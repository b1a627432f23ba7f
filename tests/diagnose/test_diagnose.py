"""Mixed precision by measurement: exact allocation, recipe text, and an end-to-end run."""

import itertools
import random

import pytest
import torch

from kvstack.diagnose import Probe, allocate, compose_recipe, measure
from kvstack.errors import BudgetError
from kvstack.stack import Recipe


def _brute(costs, sizes, budget):
    best = None
    for ch in itertools.product(*[list(c) for c in costs]):
        b = sum(s[o] for s, o in zip(sizes, ch))
        d = sum(c[o] for c, o in zip(costs, ch))
        if b <= budget and (best is None or d < best[0] - 1e-12):
            best = (d, b, ch)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_allocation_is_exactly_optimal(seed):
    rng = random.Random(seed)
    opts = {"int2": 2, "int4": 4, "int8": 8}
    costs = [{o: rng.random() / b for o, b in opts.items()} for _ in range(5)]
    sizes = [{o: b * 100 + rng.randint(0, 9) for o, b in opts.items()} for _ in range(5)]
    budget = rng.randint(1000, 3500)
    got = allocate(costs, sizes, budget)
    want = _brute(costs, sizes, budget)
    assert got.total_damage == pytest.approx(want[0], abs=1e-12)
    assert got.total_bytes <= budget


def test_impossible_budget_is_a_budget_error():
    with pytest.raises(BudgetError, match="raise --budget-bits"):
        allocate([{"int2": 1.0}], [{"int2": 100}], 99)


def test_recipe_scopes_the_exceptions_to_layer_runs():
    text = compose_recipe(("int8", "int4", "int4", "int2", "int2", "int4", "fp16"), 64)
    assert text == "int4:g64 > int8:g64@layer0 > int2:g64@layers3-4 > fp16@layer6"
    assert [s.name for s in Recipe.parse(text).stages] == ["int4", "int8", "int2", "fp16"]


def test_diagnose_end_to_end_on_a_tiny_model(tiny_model, make_ids):
    model = tiny_model("llama")
    probe = Probe(model, make_ids(48), make_ids(12, seed=9))
    sens = measure(probe, ("int2", "int4", "int8"), group=16)
    for layer in range(sens.num_layers):  # fewer bits hurt more, and cost fewer bytes
        assert sens.kl[layer]["int2"] > sens.kl[layer]["int4"] > sens.kl[layer]["int8"] >= 0
        assert sens.bytes[layer]["int2"] < sens.bytes[layer]["int4"] < sens.bytes[layer]["int8"]
    budget = sum(b["int4"] for b in sens.bytes)
    alloc = allocate(sens.kl, sens.bytes, budget)
    recipe = compose_recipe(alloc.choices, 16)
    mixed = probe.score(recipe)
    assert mixed["nbytes"] == alloc.total_bytes <= budget  # the allocation's bytes are the cache's bytes
    uniform = probe.score("int4:g16")
    # the chosen mix is never predicted worse than uniform int4 (which is one feasible choice)
    assert alloc.total_damage <= sum(k["int4"] for k in sens.kl) + 1e-12
    assert mixed["bits"] <= uniform["bits"] + 1e-9
    with torch.no_grad():
        assert probe.score("identity")["kl"] < 1e-9
