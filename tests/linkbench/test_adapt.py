"""The bandwidth-adaptive chooser against an exhaustive search, and its arithmetic by hand."""

from __future__ import annotations

import itertools
import random

import pytest

from kvstack.errors import InputError
from kvstack.linkbench.adapt import Costs, choose, order, plan_recipe, predict
from kvstack.stack import Recipe

LEVELS = ("int8", "int4", "int2")


def random_costs(rng: random.Random, layers: int, tokens: int = 1024) -> Costs:
    per_token = {"int8": 2.1, "int4": 1.1, "int2": 0.6}
    return Costs(
        levels=LEVELS,
        bytes=[{lv: int(tokens * 512 * per_token[lv] * rng.uniform(0.8, 1.2)) for lv in LEVELS} for _ in range(layers)],
        damage=[{"int8": rng.uniform(0, 1e-3), "int4": rng.uniform(1e-3, 0.05), "int2": rng.uniform(0.05, 2)}
                for _ in range(layers)],
        decode_s={"int8": rng.uniform(0.01, 0.1), "int4": rng.uniform(0.01, 0.1), "int2": rng.uniform(0.01, 0.1)},
        shared_bytes=rng.randrange(1000, 20000),
        tokens=tokens,
        first_token_s=rng.uniform(0.02, 0.1),
        text_s=rng.uniform(0.1, 1.5),
        text_bytes=4 * tokens,
    )


def brute_force(costs: Costs, rate: float, deadline: float):
    """Every level combination, plus the text: the reference the chooser must equal."""
    plans = [predict(costs, rate, ())]
    for levels in itertools.product(costs.levels, repeat=len(costs.bytes)):
        plans.append(predict(costs, rate, levels))
    meeting = [p for p in plans if p.predicted_s <= deadline + 1e-9]
    if meeting:
        return min(meeting, key=order), True
    return min(plans, key=lambda p: (round(p.predicted_s, 9), round(p.damage, 12), p.is_text)), False


@pytest.mark.parametrize("seed", range(60))
def test_choice_equals_exhaustive_search(seed):
    rng = random.Random(seed)
    costs = random_costs(rng, layers=rng.randrange(1, 5))
    rate = rng.choice([1.25e6, 1.25e7, 1.25e8])
    times = [predict(costs, rate, lv).predicted_s for lv in itertools.product(LEVELS, repeat=len(costs.bytes))]
    deadline = rng.uniform(0.9 * min(times), 1.1 * max(times))  # from nothing fits to everything fits
    plan = choose(costs, rate, deadline)
    ref, meets = brute_force(costs, rate, deadline)
    assert plan.meets == meets and plan.is_text == ref.is_text
    # the same least damage (within the microsecond rounding of the knapsack), and a plan that really meets
    assert plan.damage == pytest.approx(ref.damage, rel=1e-9, abs=1e-12)
    if meets:
        assert plan.predicted_s <= deadline + 1e-9
    else:
        assert plan.predicted_s == pytest.approx(ref.predicted_s)


def test_choice_is_deterministic():
    costs = random_costs(random.Random(7), layers=4)
    plans = {choose(costs, 1.25e8, 0.4) for _ in range(5)}
    assert len(plans) == 1


def test_prediction_by_hand():
    costs = Costs(LEVELS, bytes=[{"int8": 1000, "int4": 500, "int2": 250}] * 2,
                  damage=[{"int8": 0.0, "int4": 0.1, "int2": 1.0}] * 2,
                  decode_s={"int8": 0.2, "int4": 0.4, "int2": 0.6},
                  shared_bytes=100, tokens=1000, first_token_s=0.5, text_s=2.5, text_bytes=4000)
    plan = predict(costs, 1000.0, ("int8", "int2"))
    # shared 0.1 s + first token 0.5 s + (1.0 s + half of int8's 0.2 s decode) + (0.25 s + half of 0.6 s)
    assert plan.predicted_s == pytest.approx(0.1 + 0.5 + 1.1 + 0.55)
    assert plan.bytes == 100 + 1250
    assert plan.damage == pytest.approx(1.0)
    text = predict(costs, 1000.0, ())
    assert text.is_text and text.damage == 0 and text.predicted_s == pytest.approx(4.0 + 2.5)


def test_generous_deadline_sends_text_and_tight_one_mixes_levels():
    costs = Costs(LEVELS, bytes=[{"int8": 1000, "int4": 500, "int2": 250}] * 2,
                  damage=[{"int8": 0.01, "int4": 0.1, "int2": 1.0}, {"int8": 0.01, "int4": 0.3, "int2": 1.0}],
                  decode_s={"int8": 0.0, "int4": 0.0, "int2": 0.0}, shared_bytes=0, tokens=1000, first_token_s=0.0,
                  text_s=10.0, text_bytes=0)
    assert choose(costs, 1000.0, 10.0).is_text  # damage 0 within the deadline beats int8's 0.02
    assert choose(costs, 1000.0, 9.0).levels == ("int8", "int8")
    plan = choose(costs, 1000.0, 1.5)  # 1.5 s: one layer at int8, the other at int4
    assert plan.levels == ("int4", "int8") and plan.meets  # layer 1 is the more sensitive one
    assert Recipe.parse(plan_recipe(plan)).text == "int8:g64 > int4:g64@layer0"
    late = choose(costs, 1000.0, 0.1)  # nothing fits: the fastest plan, flagged
    assert not late.meets and late.levels == ("int2", "int2")


def test_bad_inputs_are_input_errors():
    costs = random_costs(random.Random(0), layers=2)
    with pytest.raises(InputError, match="positive"):
        choose(costs, 0.0, 1.0)
    with pytest.raises(InputError, match="positive"):
        choose(costs, 1e6, -1.0)
    with pytest.raises(InputError, match="levels"):
        Costs(LEVELS, [{"int8": 1}], [{"int8": 0.0}], {"int8": 0.0}, 0, 10, 0.0, 0.0, 0)
    with pytest.raises(InputError, match="text plan"):
        plan_recipe(predict(costs, 1e6, ()))
