"""Every registered stage, end to end: compress -> generate -> save/load (or its typed refusal) -> plan.

The one test a new stage gets for free (docs/adding-a-stage.md): on one tiny Llama (4 layers,
2 KV heads of 64, fp32, 200 context tokens) each stage of the registry must build a cache that
drives ``kvstack.generate``; ``kvstack.save``/``kvstack.load`` must give back a cache that
generates the same tokens - or, for the encodings the wire format cannot store yet
(``NOT_SAVED``), ``kvstack.save`` must refuse with ``InputError`` naming the encoding and leave
no file behind; and ``kvstack plan`` must predict its bytes as ``tests/plan/test_recipe_bytes.py``
requires. Question-aware stages (q2c, ...) get question ids like every other stage.
"""

from __future__ import annotations

import pytest
import torch
from plan_bytes import NEEDS_VALUE, assert_plan_matches

import kvstack
from kvstack.errors import InputError
from kvstack.grammar import SPECS
from kvstack.plan import load_spec
from kvstack.stack import REGISTRY, _load_builtin_stages

CONTEXT = 200
NEW_TOKENS = 4
# minicache merges nothing of a random model at its default threshold; t=1 merges every token past the sinks
RUN_AS = {**NEEDS_VALUE, "minicache": "minicache:t=1"}
# Stages whose caches the wire format refuses today (docs/status.md: low-rank and merged caches
# cannot be saved yet), with the encodings the refusal must name. A stage that learns to save leaves this list.
NOT_SAVED: dict[str, str] = {
    "cq": "KeptRows holding CQRows",
    "gear": "GearRows",
    "kvquant": "KeptRows holding RotatedRows holding NuqRows",
    "latent": "KeptRows holding JointRows",
    "minicache": "MergedRows",
    "svd": "KeptRows holding LowRankRows",
    "xkv": "KeptRows holding JointRows",
}


@pytest.fixture(scope="module")
def tiny(tiny_model, make_ids, tmp_path_factory):
    """(model, its planner spec from its own config.json, context ids, question ids), built once."""
    model = tiny_model("llama", head_dim=64, num_hidden_layers=4)
    folder = tmp_path_factory.mktemp("tiny")
    model.config.to_json_file(folder / "config.json")
    return model, load_spec(str(folder / "config.json")), make_ids(CONTEXT), make_ids(8, seed=1)


def test_the_registry_is_the_grammars_stage_list():
    _load_builtin_stages()
    assert set(REGISTRY) == set(SPECS)
    assert set(NOT_SAVED) <= set(SPECS)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_stage_compresses_generates_saves_and_plans(tiny, name, tmp_path):
    model, spec, ids, question = tiny
    recipe = RUN_AS.get(name, name)
    cache = kvstack.compress(model, ids, recipe=recipe, question_ids=question)
    answer = kvstack.generate(model, cache, question, max_new_tokens=NEW_TOKENS)
    assert answer.shape == (NEW_TOKENS,)

    path = tmp_path / "cache.kvw"
    if name in NOT_SAVED:
        with pytest.raises(InputError, match=f"does not know {NOT_SAVED[name]}, so this cache cannot be saved"):
            kvstack.save(cache, path)
        assert not path.exists()
    else:
        assert kvstack.save(cache, path) > 0
        loaded = kvstack.load(path, model)
        assert loaded.nbytes == cache.nbytes
        assert torch.equal(kvstack.generate(model, loaded, question, max_new_tokens=NEW_TOKENS), answer)

    assert_plan_matches(cache, recipe, spec, CONTEXT)
