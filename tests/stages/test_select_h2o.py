"""H2O's ``stride`` option: parsing, typed errors, and kept sets against plain-Python references
built from transformers' own eager attention probabilities."""

from __future__ import annotations

import math

import pytest
import torch

import kvstack
from kvstack.api import compress_many
from kvstack.errors import RecipeError
from kvstack.grammar.select import DEFAULT_STRIDE
from kvstack.hf.attention_scored import BAND, TAIL
from kvstack.stages.select.h2o import attention_need, attention_strides

T = 150  # longer than TAIL, so a stride really samples


def probs_of(model, ids):
    model.set_attn_implementation("eager")
    with torch.no_grad():
        out = model(ids[None], output_attentions=True)
    model.set_attn_implementation("sdpa")
    return [a[0].double() for a in out.attentions]  # [Hq, T, T]


def reference_keep(sums: torch.Tensor, fraction: float) -> list[set[int]]:
    """Per KV head: the newest half of the budget plus the best others by score (ties: earlier)."""
    b = max(1, math.floor(fraction * T + 0.5))
    recent = math.floor(0.5 * b + 0.5)
    grouped = sums.reshape(2, 2, T).sum(1)  # 4 query heads -> 2 KV heads
    out = []
    for h in range(2):
        forced = set(range(T - recent, T))
        pool = sorted((p for p in range(T) if p not in forced), key=lambda p: (-float(grouped[h, p]), p))
        out.append(forced | set(pool[: b - recent]))
    return out


def kept(cache) -> list[list[set[int]]]:
    out = []
    for layer in cache.layers:
        pos, offsets = layer.row_positions().tolist(), layer.head_offsets()
        out.append([set(pos[o : o + n]) for o, n in zip(offsets, layer.lengths, strict=True)])
    return out


def test_parse_stride_and_what_it_asks_the_driver_for():
    stage = kvstack.parse_recipe("h2o:0.25,stride=8").stages[0]
    assert stage.stride == 8 and stage.needs == frozenset({"attention:stride=8"})
    assert kvstack.parse_recipe(stage.spec()).stages[0].stride == 8
    exact = kvstack.parse_recipe("h2o:0.25,stride=1").stages[0]
    assert exact.needs == frozenset({"attention"})  # the exact capture keeps its historical name
    assert kvstack.parse_recipe("h2o:0.25").stages[0].stride == DEFAULT_STRIDE
    based = kvstack.parse_recipe("critical:0.5,base=h2o").stages[0]
    assert attention_need(DEFAULT_STRIDE) in based.needs  # a based stage asks for its base's capture
    assert attention_strides(["attention", "window_queries", "attention:stride=16"]) == (1, 16)


@pytest.mark.parametrize("raw", ["0", "-2", "1.5", "x", ""])
def test_bad_stride_is_a_recipe_error(raw):
    with pytest.raises(RecipeError, match=rf"parameter 'stride' got '{raw}', which is not a valid whole number >= 1"):
        kvstack.parse_recipe(f"h2o:0.25,stride={raw}")


@pytest.mark.parametrize("stride", [1, 4, 16])
def test_kept_sets_match_the_weighted_reference(tiny_model, make_ids, stride):
    model = tiny_model("llama")
    ids = make_ids(T, seed=7)
    cache = kvstack.compress(model, ids, f"h2o:0.3,stride={stride}")
    weights = {p: 1.0 if p >= T - TAIL else float(stride) for p in range(T - 1, -1, -1)
               if (T - 1 - p) % stride == 0 or p >= T - TAIL}
    # every query less than BAND positions after a key counts 1; farther ones their weight (0 if not picked)
    dist = torch.arange(T).view(-1, 1) - torch.arange(T).view(1, -1)
    w = torch.tensor([weights.get(p, 0.0) for p in range(T)], dtype=torch.float64).view(-1, 1).expand(T, T)
    w = torch.where((dist >= 0) & (dist < BAND), torch.ones((), dtype=torch.float64), w)
    for layer, probs in enumerate(probs_of(model, ids)):
        sums = (probs * w).sum(dim=1)
        assert kept(cache)[layer] == reference_keep(sums, 0.3), layer


def test_short_prompts_are_scored_exactly_whatever_the_stride(tiny_model, make_ids):
    model = tiny_model("llama")
    ids = make_ids(TAIL, seed=8)  # every query is in the tail
    exact = kept(kvstack.compress(model, ids, "h2o:0.3,stride=1"))
    assert kept(kvstack.compress(model, ids, "h2o:0.3,stride=32")) == exact


def test_one_prefill_serves_several_strides(tiny_model, make_ids):
    model = tiny_model("llama")
    ids = make_ids(T, seed=9)
    texts = ["h2o:0.3,stride=1", "h2o:0.3,stride=8", "snapkv:0.3,window=4"]
    shared = {r.text: kept(c) for r, c in compress_many(model, ids, [kvstack.parse_recipe(t) for t in texts])}
    for text in texts:
        assert shared[text] == kept(kvstack.compress(model, ids, text)), text
    assert shared["h2o:0.3,stride=1"] != shared["h2o:0.3,stride=8"]  # the estimate is not the exact set here
