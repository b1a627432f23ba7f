"""Windowed surprisal (``surprisal:...,window=W``) and span means against float64 references."""

from __future__ import annotations

import copy

import pytest
import torch
from select_hand import make_ref
from test_select import HKV, T, budget, kept, top
from test_select_surprisal import nll_ref

import kvstack
from kvstack.errors import RecipeError
from kvstack.grammar.needs import NEED_LOCAL_NLL, local_nll_need, local_nll_windows
from kvstack.hf.captures import providers_for
from kvstack.hf.captures.local_nll import windowed_nll
from kvstack.stack import Recipe
from kvstack.stages.select.surprisal import span_mean


@pytest.fixture(scope="module")
def ref():
    return make_ref()


def local_ref(model, ids: torch.Tensor, window: int) -> torch.Tensor:
    """``[T]`` float64: token ``t`` predicted by a fresh forward over ``ids[c - window : t]`` (``c``: t's chunk)."""
    m64 = copy.deepcopy(model).double()
    out = torch.full((ids.numel(),), float("inf"), dtype=torch.float64)
    with torch.no_grad():
        for t in range(1, ids.numel()):
            a = max(0, (t // window) * window - window)
            logp = m64(ids[None, a:t]).logits[0, -1].log_softmax(-1)
            out[t] = -logp[ids[t]]
    return out


@pytest.mark.parametrize("window", [8, 13])
def test_windowed_nll_matches_a_direct_computation(ref, window):
    got = windowed_nll(ref.model, ref.ids, window)
    want = local_ref(ref.model, ref.ids, window)
    assert got.shape == (T,) and torch.isinf(got[0])
    assert torch.allclose(got[1:].double(), want[1:], atol=1e-4)
    # it is not the global surprisal: tokens past the second window lose their far context
    assert not torch.allclose(got[2 * window :].double(), nll_ref(ref.model, ref.ids)[2 * window :], atol=1e-3)


def test_a_window_as_long_as_the_context_is_the_global_surprisal(ref):
    got = windowed_nll(ref.model, ref.ids, T)
    assert torch.allclose(got[1:].double(), nll_ref(ref.model, ref.ids)[1:], atol=1e-4)


def test_span_mean_is_the_trailing_mean():
    x = torch.tensor([5.0, 1.0, 3.0, 7.0, 2.0], dtype=torch.float64)
    assert torch.allclose(span_mean(x, 2), torch.tensor([5.0, 3.0, 3.0, 11 / 3, 4.0], dtype=torch.float64))
    assert torch.equal(span_mean(x, 0), x)


def test_the_provider_answers_a_parameterized_need():
    need = local_nll_need(128)
    assert need == f"{NEED_LOCAL_NLL}:window=128"
    assert [p.need for p in providers_for({need})] == [NEED_LOCAL_NLL]
    assert local_nll_windows({need, local_nll_need(64), "token_nll"}) == (64, 128)


@pytest.mark.parametrize("fraction,span,window,agg", [(0.25, 0, 8, "max"), (0.25, 3, 8, "mean"), (0.5, 4, 16, "max")])
def test_windowed_surprisal_keeps_the_reference_sets(ref, fraction, span, window, agg):
    recipe = f"surprisal:{fraction},span={span},window={window},agg={agg}"
    cache = kvstack.compress(ref.model, ref.ids, recipe)
    scores = local_ref(ref.model, ref.ids, window).nan_to_num(posinf=1e9)
    if agg == "mean" and span:
        scores = torch.stack([scores[max(0, j - span) : j + 1].mean() for j in range(T)])
    if span:
        scores = torch.stack([scores[max(0, j - span) : j + 1].max() for j in range(T)])
    want = top(scores, budget(fraction))
    for layer, heads in enumerate(kept(cache)):
        assert heads == [want] * HKV, (recipe, layer)


def spread_max(scores: torch.Tensor, span: int) -> torch.Tensor:
    return torch.stack([scores[max(0, j - span) : j + 1].max() for j in range(scores.numel())])


def test_clip_and_union_keep_the_reference_sets(ref):
    fraction, span, window, clip = 0.25, 3, 8, 1.5
    cache = kvstack.compress(
        ref.model, ref.ids, f"surprisal:{fraction},span={span},window={window},agg=mean,clip={clip},union=1"
    )
    local = local_ref(ref.model, ref.ids, window).nan_to_num(posinf=1e9)
    local[1:] = local[1:].clamp(max=clip)
    mine = spread_max(torch.stack([local[max(0, j - span) : j + 1].mean() for j in range(T)]), span)
    default = spread_max(local_ref(ref.model, ref.ids, window).nan_to_num(posinf=1e9), span)

    def rank(x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([(x > v).sum().item() for v in x])  # 0 = best (ties share a rank)

    best = torch.minimum(rank(mine), rank(default))
    k = budget(fraction)
    for layer, heads in enumerate(kept(cache)):
        for h in heads:
            assert len(h) == k
            # every kept token ranks at least as well as every dropped one under the union
            dropped = [j for j in range(T) if j not in h]
            assert max(best[list(h)]) <= min(best[dropped]), layer
    assert Recipe.parse(f"surprisal:0.25,window={window},union=1").needs == frozenset({local_nll_need(window)})


def test_the_default_is_the_global_surprisal(ref):
    a = kvstack.compress(ref.model, ref.ids, "surprisal:0.25,span=3")
    b = kvstack.compress(ref.model, ref.ids, "surprisal:0.25,span=3,window=0,agg=max")
    assert kept(a) == kept(b)
    assert Recipe.parse("surprisal:0.25").needs == frozenset({"token_nll"})
    assert Recipe.parse("surprisal:0.25,window=64").needs == frozenset({local_nll_need(64)})


def test_windowed_surprisal_drives_generate(ref):
    cache = kvstack.compress(ref.model, ref.ids, "surprisal:0.5,span=4,window=8,agg=mean > int4")
    out = kvstack.generate(ref.model, cache, ref.question, max_new_tokens=4)
    assert out.shape == (4,)


def test_back_keeps_the_tokens_before_a_kept_token_too(ref):
    """back=B: position j scores max(nll[j - span .. j + back]); the kept set is the top-k of that, and the
    same tokens for every head; union with back spreads both of its scores the same way."""
    fraction, span, back = 0.25, 2, 3
    cache = kvstack.compress(ref.model, ref.ids, f"surprisal:{fraction},span={span},back={back}")
    nll = nll_ref(ref.model, ref.ids).nan_to_num(posinf=1e9)
    both = torch.stack([nll[max(0, j - span) : j + back + 1].max() for j in range(T)])
    k = budget(fraction)
    for heads in kept(cache):
        for h in heads:
            assert len(h) == k
            dropped = [j for j in range(T) if j not in h]
            assert min(both[list(h)]) >= max(both[dropped])
    no_back = kvstack.compress(ref.model, ref.ids, f"surprisal:{fraction},span={span}")
    assert kept(no_back) != kept(cache)  # the option changes what is kept
    union = kvstack.compress(ref.model, ref.ids, f"surprisal:{fraction},span={span},back={back},union=1")
    assert all(len(h) == k for heads in kept(union) for h in heads)


@pytest.mark.parametrize(
    "bad,match", [("window=-1", "window=-1"), ("window=4", "at least 8"), ("agg=sum", "agg"), ("clip=-2", "clip"),
                  ("back=-1", "back")]
)
def test_bad_options_are_recipe_errors(ref, bad, match):
    with pytest.raises(RecipeError, match=match):
        Recipe.parse(f"surprisal:0.5,{bad}")
    with pytest.raises(RecipeError, match=match):  # nothing is computed before the error
        kvstack.compress(ref.model, ref.ids, f"surprisal:0.5,{bad}")
