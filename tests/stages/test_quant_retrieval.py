"""The 4-bit quantizers on a real trained model (kvstack-retrieval, 1k-token needle samples): the greedy
answer over the quantized cache is the full cache's answer. Slow (loads the model, prefills real text)."""

from __future__ import annotations

import pytest
import torch

import kvstack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def retrieval():
    from kvstack.eval.prompt import format_sample
    from kvstack.eval.tasks import get_task
    from kvstack.zoo import load

    model, tok = load("kvstack-retrieval")
    prompts = [format_sample(tok, s) for s in get_task("niah_single").samples(tok, 1024, 3, seed=0)]
    return model, prompts


@pytest.mark.parametrize("recipe", ["kvquant:4", "gear:4", "int4:g64"])
def test_greedy_answer_equals_the_full_cache(retrieval, recipe):
    model, prompts = retrieval
    for p in prompts:
        full = kvstack.generate(model, kvstack.compress(model, p.context_ids, "identity"), p.question_ids, 10)
        cache = kvstack.compress(model, p.context_ids, recipe)
        assert cache.ratio > 5  # fp32 model: 4-bit codes with their overheads
        assert torch.equal(kvstack.generate(model, cache, p.question_ids, 10), full)
