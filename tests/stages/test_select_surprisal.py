"""Surprisal selection against a float64 reference: -log p(token | earlier tokens) from one full forward."""

from __future__ import annotations

import pytest
import torch
from select_hand import hand_cache, make_ref, same_generation
from test_select import HKV, T, budget, kept, top

import kvstack
from kvstack.errors import ModelError
from kvstack.hf.model import model_info
from kvstack.hf.prefill import prefill
from kvstack.stack import NEED_TOKEN_NLL, Recipe, StageContext


@pytest.fixture(scope="module")
def ref():
    return make_ref()


def nll_ref(model, ids: torch.Tensor) -> torch.Tensor:
    """``[T]`` float64 surprisal of each token; position 0 (unpredicted) is +inf."""
    with torch.no_grad():
        logp = model(ids[None]).logits[0].double().log_softmax(-1)
    out = torch.full((ids.numel(),), float("inf"), dtype=torch.float64)
    out[1:] = -logp[:-1].gather(1, ids[1:, None].long())[:, 0]
    return out


@pytest.mark.parametrize("chunk", [1024, 7])
def test_prefill_captures_each_tokens_surprisal(ref, chunk):
    got = prefill(ref.model, model_info(ref.model), ref.ids, frozenset({NEED_TOKEN_NLL}), chunk_size=chunk)
    want = nll_ref(ref.model, ref.ids)
    nll = got.captures[NEED_TOKEN_NLL]
    assert nll.shape == (T,) and torch.isinf(nll[0])
    assert torch.allclose(nll[1:].double(), want[1:], atol=1e-4)


@pytest.mark.parametrize("fraction,span", [(0.25, 0), (0.5, 0), (0.25, 3)])
def test_surprisal_keeps_the_reference_sets(ref, fraction, span):
    cache = kvstack.compress(ref.model, ref.ids, f"surprisal:{fraction},span={span}")
    scores = nll_ref(ref.model, ref.ids).nan_to_num(posinf=1e9)
    if span:
        scores = torch.stack([scores[max(0, j - span) : j + 1].max() for j in range(T)])
    want = top(scores, budget(fraction))
    for layer, heads in enumerate(kept(cache)):
        assert heads == [want] * HKV, layer  # every head of every layer keeps the same positions
    by_hand = hand_cache(cache, ref.ids, ref.keys, ref.values, [[want] * HKV for _ in range(2)])
    # the heads keep one position set, so each layer stores its int32 positions once, not once a head
    assert cache.nbytes == by_hand.nbytes - 2 * (HKV - 1) * budget(fraction) * 4
    assert same_generation(ref.model, cache, by_hand, ref.question)


def test_surprisal_then_int4_drives_generate(ref):
    cache = kvstack.compress(ref.model, ref.ids, "surprisal:0.5,span=4 > int4")
    assert kvstack.generate(ref.model, cache, ref.question, max_new_tokens=4).shape == (4,)


def test_surprisal_without_its_capture_is_a_clear_error(ref):
    cache = kvstack.compress(ref.model, ref.ids, "identity")
    with pytest.raises(ModelError, match="log-likelihood"):
        Recipe.parse("surprisal:0.5").apply(cache, StageContext(4, HKV, 16, 2, captures={}))
