"""KVzip against a brute-force reference: transformers' eager attention over the context
followed by each reconstruction chunk, the full probability matrix in float64."""

from __future__ import annotations

import pytest
import torch
from select_hand import hand_cache, make_ref, same_generation
from test_select import HKV, T, budget, context, group, kept, tiny_llama, top

import kvstack
from kvstack.errors import BudgetError, ModelError
from kvstack.hf.captures.reconstruction import reconstruction_scores
from kvstack.hf.model import model_info
from kvstack.stack import Recipe, StageContext


@pytest.fixture(scope="module")
def ref():
    return make_ref()


def kvzip_ref(model, ids: torch.Tensor, chunk: int) -> list[torch.Tensor]:
    """Per layer ``[Hkv, T]``: max over the chunk queries and the group of the attention a context
    token gets, each chunk fed right after the context (softmax over context + chunk so far)."""
    best = None
    for a in range(0, T, chunk):
        seq = torch.cat([ids, ids[a : a + chunk]])
        with torch.no_grad():
            att = model(seq[None], output_attentions=True).attentions
        per = [group(x[0, :, T:, :T].double().amax(1), "max") for x in att]
        best = per if best is None else [torch.maximum(b, p) for b, p in zip(best, per, strict=True)]
    return best


@pytest.mark.parametrize("chunk", [1024, 20])
def test_reconstruction_scores_match_full_attention(ref, chunk):
    cache = kvstack.compress(ref.model, ref.ids, "identity")
    mine = reconstruction_scores(ref.model, model_info(ref.model), cache, chunk=chunk)
    for layer, want in enumerate(kvzip_ref(ref.model, ref.ids, chunk)):
        assert torch.allclose(mine[layer].double(), want, atol=1e-6), layer


@pytest.mark.parametrize("fraction,sink", [(0.25, 0), (0.5, 3), (0.125, 1)])
def test_kvzip_keeps_the_reference_sets(ref, fraction, sink):
    cache = kvstack.compress(ref.model, ref.ids, f"kvzip:{fraction},sink={sink}")
    scores = kvzip_ref(ref.model, ref.ids, 1024)
    for layer, heads in enumerate(kept(cache)):
        assert heads == [top(scores[layer][h], budget(fraction), range(sink)) for h in range(HKV)], layer
        assert all(len(s) == budget(fraction) for s in heads)
    by_hand = hand_cache(cache, ref.ids, ref.keys, ref.values,
                         [[top(scores[i][h], budget(fraction), range(sink)) for h in range(HKV)] for i in range(2)])
    assert cache.nbytes == by_hand.nbytes
    assert same_generation(ref.model, cache, by_hand, ref.question)


def test_kvzip_records_its_extra_pass(ref):
    cache = kvstack.compress(ref.model, ref.ids, "kvzip:0.5")
    assert cache.stats["kvzip_seconds"] > 0


def test_kvzip_after_another_selection_scores_by_position(ref):
    # a prior stage changes the rows; kvzip still scores each kept row by its own position
    cache = kvstack.compress(ref.model, ref.ids, "streaming:sink=2,window=30 > kvzip:0.5")
    scores = kvzip_ref(ref.model, ref.ids, 1024)
    held = list(range(2)) + list(range(T - 30, T))
    for layer, heads in enumerate(kept(cache)):
        assert heads == [top(scores[layer][h], budget(0.5, 32), candidates=held) for h in range(HKV)]


def test_sliding_window_model_matches_reference(tiny_model):
    model = tiny_model("mistral_swa", attn_implementation="eager")  # window 16
    ids = context(2)
    cache = kvstack.compress(model, ids, "identity")
    mine = reconstruction_scores(model, model_info(model), cache, chunk=20)
    for layer, want in enumerate(kvzip_ref(model, ids, 20)):
        assert torch.allclose(mine[layer].double(), want, atol=1e-6), layer
        assert bool((want[:, : T - 15] == 0).all())  # only the held window is ever attended
    small = kvstack.compress(model, ids, "kvzip:0.5,alloc=adakv")
    assert sum(sum(layer.lengths) for layer in small.layers) == 2 * HKV * budget(0.5, 15)


def test_bad_input():
    with pytest.raises(BudgetError, match="kvzip"):
        Recipe.parse("kvzip:0")
    with pytest.raises(BudgetError, match="kvzip"):
        Recipe.parse("kvzip:1.01")
    model = tiny_llama()
    cache = kvstack.compress(model, context(1), "identity")
    with pytest.raises(ModelError, match="kvstack.compress"):
        Recipe.parse("kvzip:0.5").apply(cache, StageContext(4, 2, 16, 2))


def test_cpu_sdpa_models_score_from_the_kernels_log_sum_exps(ref, monkeypatch):
    # the fast path (the model's own flash kernel gives the output and log-sum-exps) is the one a CPU
    # SDPA model takes, and matches the brute-force reference (layer 2 also checks its outputs)
    from kvstack.hf.captures import reconstruction

    want = kvzip_ref(ref.model, ref.ids, 20)  # eager: the reference needs the attention matrices
    model = tiny_llama()  # the same weights, attending through SDPA
    model.set_attn_implementation("sdpa")
    calls = []
    real = reconstruction.flash_with_lse
    monkeypatch.setattr(reconstruction, "flash_with_lse", lambda *a: calls.append(1) or real(*a))
    cache = kvstack.compress(model, ref.ids, "identity")
    mine = reconstruction_scores(model, model_info(model), cache, chunk=20)
    assert len(calls) == model.config.num_hidden_layers * -(-T // 20)
    for layer, expected in enumerate(want):
        assert torch.allclose(mine[layer].double(), expected, atol=1e-6), layer
