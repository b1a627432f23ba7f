"""CriticalKV against a float64 reference: the base's attention from transformers' own eager
probabilities, the value norms through ``o_proj`` projected by hand."""

from __future__ import annotations

import pytest
import torch
from select_hand import hand_cache, make_ref, same_generation
from test_select import HKV, HQ, Ref, T, budget, group, kept, top

import kvstack
from kvstack.errors import BudgetError, ModelError, RecipeError
from kvstack.stack import Recipe, StageContext
from kvstack.stages.select.critical import projected_value_norm


@pytest.fixture(scope="module")
def ref():
    return make_ref()


def vnorm(ref: Ref, layer: int) -> torch.Tensor:
    """``[Hkv, T]``: mean over each group's query heads of ``||v W_o[q]||_1``, float64."""
    w = ref.model.model.layers[layer].self_attn.o_proj.weight.detach().double()  # [hidden, Hq*D]
    d = w.shape[1] // HQ
    out = torch.zeros(HKV, T, dtype=torch.float64)
    for q in range(HQ):
        proj = ref.values[layer][q // (HQ // HKV)] @ w[:, q * d : (q + 1) * d].T  # [T, hidden]
        out[q // (HQ // HKV)] += proj.abs().sum(-1) / (HQ // HKV)
    return out


def critical_ref(p: torch.Tensor, norm: torch.Tensor, fraction: float, first: float, forced=()) -> set[int]:
    """Stage 1: forced plus the best ``int(first*budget) - forced`` by ``p``; stage 2 by ``(p+eps)*norm``."""
    b = budget(fraction)
    stage1 = top(p, max(int(first * b), len(forced)), forced)
    return top((p + 1e-4) * norm, b, stage1)


@pytest.mark.parametrize("fraction,first", [(0.25, 0.5), (0.5, 0.5), (0.3, 0.0), (0.5, 0.8)])
def test_critical_on_tova_matches_reference(ref, fraction, first):
    cache = kvstack.compress(ref.model, ref.ids, f"critical:{fraction},base=tova,first={first}")
    for layer, heads in enumerate(kept(cache)):
        p = group(ref.attn[layer][:, T - 1])
        p = p / p.sum(-1, keepdim=True)
        norm = vnorm(ref, layer)
        for h in range(HKV):
            assert heads[h] == critical_ref(p[h], norm[h], fraction, first), (layer, h)
            assert len(heads[h]) == budget(fraction)


def test_critical_counts_forced_rows_in_stage_one(ref):
    # h2o forces the newest round(0.5 * budget) rows; they fill stage 1 before any base pick
    cache = kvstack.compress(ref.model, ref.ids, "critical:0.5,base=h2o,first=0.75,sink=2")
    b = budget(0.5)
    forced = set(range(2)) | set(range(T - round(0.5 * b), T))
    for layer, heads in enumerate(kept(cache)):
        p = group(ref.attn[layer].sum(1))
        p = p / p.sum(-1, keepdim=True)
        norm = vnorm(ref, layer)
        assert heads == [critical_ref(p[h], norm[h], 0.5, 0.75, forced) for h in range(HKV)]


def test_first_one_is_the_base_method(ref):
    a = kvstack.compress(ref.model, ref.ids, "critical:0.3,base=tova,first=1")
    assert kept(a) == kept(kvstack.compress(ref.model, ref.ids, "tova:0.3"))


def test_projected_value_norm_by_hand():
    values = torch.tensor([[[1.0, -2.0]], [[0.5, 0.0]]])  # 2 KV heads, 1 row, D=2
    w_o = torch.tensor([[[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]]] * 2 + [[[3.0, 0.0, 0.0], [0.0, 0.0, 0.0]]] * 2)
    # KV head 0 (query heads 0, 1): v W = [1, -2, 2] -> L1 5, both heads; KV head 1: [1.5, 0, 0] -> 1.5
    assert projected_value_norm(values, w_o).tolist() == [[5.0], [1.5]]


def test_critical_needs_the_question_of_its_base(ref):
    with pytest.raises(kvstack.errors.InputError):
        kvstack.compress(ref.model, ref.ids, "critical:0.5,base=q2c")
    assert Recipe.parse("critical:0.5,base=q2c").needs_question
    cache = kvstack.compress(ref.model, ref.ids, "critical:0.5,base=q2c", question_ids=ref.question)
    assert all(n == budget(0.5) for layer in cache.layers for n in layer.lengths)


@pytest.mark.parametrize(
    "recipe,error",
    [
        ("critical:0.5,first=1.5", RecipeError),
        ("critical:0.5,eps=-1", RecipeError),
        ("critical:0.5,base=streaming", RecipeError),
        ("critical:0.5,base=critical", RecipeError),
        ("critical:0.5,base=nope", RecipeError),
        ("critical:0", BudgetError),
        ("critical:1.5", BudgetError),
    ],
)
def test_bad_parameters(recipe, error):
    with pytest.raises(error, match="critical"):
        Recipe.parse(recipe)


def test_without_the_capture_says_how(ref):
    stage = Recipe.parse("critical:0.5,base=knorm").stages[0]
    cache = kvstack.compress(ref.model, ref.ids, "identity")
    with pytest.raises(ModelError, match="kvstack.compress"):
        stage.apply(cache, StageContext(HQ, HKV, 16, 2), {0, 1})


def test_generation_equals_hand_built_cache(ref):
    cache = kvstack.compress(ref.model, ref.ids, "critical:0.25,base=tova")
    sets = []
    for layer in range(2):
        p = group(ref.attn[layer][:, T - 1])
        p = p / p.sum(-1, keepdim=True)
        sets.append([critical_ref(p[h], vnorm(ref, layer)[h], 0.25, 0.5) for h in range(HKV)])
    by_hand = hand_cache(cache, ref.ids, ref.keys, ref.values, sets)
    assert cache.nbytes == by_hand.nbytes
    assert same_generation(ref.model, cache, by_hand, ref.question)
