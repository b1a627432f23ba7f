"""kvquant, gear and cq through kvstack.compress and kvstack.generate on tiny random models:
generation over the compressed cache is exactly generation over a dense cache of its decoded rows
(pre-RoPE keys rotated back at the right positions, also after eviction and on sliding-window
layers), the logits stay near the full cache's, ordered by bits, and the recipes stack."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import kvstack
from kvstack.hf import CompressedCache, enable
from kvstack.hf.compat import cache_kwargs
from kvstack.kv import DenseRows, KVCache
from kvstack.stages.common.keep import KeptRows
from kvstack.stages.quant.rope import RotatedRows

T = 96


def dense_copy(cache: KVCache) -> KVCache:
    return cache.map_layers(lambda i, layer: replace(
        layer, keys=DenseRows(layer.keys.decode().clone()), values=DenseRows(layer.values.decode().clone())))


@torch.no_grad()
def question_logits(model, cache: KVCache, question: torch.Tensor) -> torch.Tensor:
    with enable(model):
        return model(input_ids=question.view(1, -1), **cache_kwargs(CompressedCache(cache, torch.float32))).logits[0]


@pytest.mark.parametrize("recipe", ["kvquant:4", "kvquant:3,outliers=0.02", "gear:2,rank=2", "cq:1",
                                    "snapkv:0.5 > kvquant:3", "kvquant:4 > streaming:sink=4,window=40"])
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_generate_is_generation_over_the_decoded_rows(recipe, arch, tiny_model, make_ids):
    model = tiny_model(arch)
    ctx, question = make_ids(T, seed=1), make_ids(5, seed=2)
    cache = kvstack.compress(model, ctx, recipe)
    if recipe.startswith("kvquant"):  # keys stored before RoPE, behind the fp16 sink token
        keys = cache.layers[0].keys
        assert isinstance(keys, KeptRows) and isinstance(keys.inner, RotatedRows)
    reference = dense_copy(cache)
    got = kvstack.generate(model, cache, question, max_new_tokens=6)
    assert torch.equal(got, kvstack.generate(model, reference, question, max_new_tokens=6))
    torch.testing.assert_close(question_logits(model, cache, question), question_logits(model, reference, question),
                               atol=1e-5, rtol=0)


def test_logits_near_the_full_cache_and_ordered_by_bits(tiny_model, make_ids):
    model = tiny_model("llama")
    ctx, question = make_ids(T, seed=1), make_ids(6, seed=2)
    full = question_logits(model, kvstack.compress(model, ctx, "identity"), question)
    err = {}
    for recipe in ("kvquant:4", "kvquant:3", "kvquant:2", "gear:4", "gear:2", "gear:2,rank=0", "cq:1"):
        cache = kvstack.compress(model, ctx, recipe)
        err[recipe] = float((question_logits(model, cache, question) - full).abs().mean() / full.std())
    assert err["kvquant:4"] < err["kvquant:3"] < err["kvquant:2"]
    assert err["gear:4"] < err["gear:2"] < err["gear:2,rank=0"]  # the low-rank fix helps
    assert max(err["kvquant:4"], err["gear:4"]) < 0.3  # 4 bits: within a third of a logit std on average
    assert err["cq:1"] < 1.5  # 1 bit per channel: degraded, not noise


def test_sliding_window_model_drops_pre_rope_rows_while_decoding(tiny_model, make_ids):
    model = tiny_model("mistral_swa")  # window 16: the cache evicts compressed rows at every step
    cache = kvstack.compress(model, make_ids(40, seed=3), "kvquant:4")
    reference = dense_copy(cache)
    question = make_ids(3, seed=4)
    assert torch.equal(kvstack.generate(model, cache, question, max_new_tokens=5),
                       kvstack.generate(model, reference, question, max_new_tokens=5))


def test_compress_captures_rotary_tables_for_pre_rope_stages(tiny_model, make_ids):
    # the prefill driver hands the model's rotary tables to stages that need them (kvquant, svd:rope=pre)
    model = tiny_model("llama")
    cache = kvstack.compress(model, make_ids(T, seed=5), "svd:rank=8,rope=pre")
    assert cache.layers[0].keys.inner.rope is not None
