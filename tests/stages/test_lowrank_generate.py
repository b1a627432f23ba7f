"""Every low-rank and cross-layer stage through the Hugging Face path: generate after compressing
gives exactly what a hand-built dense cache of the reconstructed rows gives."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import kvstack
from kvstack.hf import CompressedCache, enable
from kvstack.hf.compat import cache_kwargs
from kvstack.hf.model import model_info
from kvstack.hf.prefill import prefill
from kvstack.inspect.rope import rope_tables
from kvstack.kv import DenseRows, KVCache
from kvstack.stack import Recipe, StageContext
from kvstack.stages.common.keep import KeptRows
from kvstack.stages.common.rope import NEED_ROPE
from kvstack.stages.crosslayer.merge import MergedRows
from kvstack.stages.lowrank.rows import JointRows, LowRankRows

T = 80  # enough for snapkv's default 32-token window at fraction 0.5


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def dense_copy(cache: KVCache) -> KVCache:
    """The same cache with every layer's rows decoded into plain dense rows (the hand-built reference)."""
    return cache.map_layers(
        lambda i, layer: replace(layer, keys=DenseRows(layer.keys.decode().clone()),
                                 values=DenseRows(layer.values.decode().clone()))
    )


@torch.no_grad()
def next_logits(model, cache: KVCache, token: int) -> torch.Tensor:
    with enable(model):
        hf = CompressedCache(cache, torch.float32)
        return model(input_ids=torch.tensor([[token]]), **cache_kwargs(hf), use_cache=True).logits[0, -1]


RECIPES = [
    ("svd:rank=8", LowRankRows),
    ("svd:energy=0.9,bits=4,qgroup=16", LowRankRows),
    ("latent:rank=24", JointRows),
    ("xkv:group=2,rank=20", JointRows),
    ("minicache:start=0,t=0.5", MergedRows),
    ("snapkv:0.5 > svd:rank=8 > int8", LowRankRows),  # int8 quantizes the coefficients
]


@pytest.mark.parametrize("recipe, kind", RECIPES)
@torch.no_grad()
def test_generate_matches_a_dense_cache_of_the_reconstruction(recipe, kind, tiny_model, make_ids):
    model = tiny_model("llama")
    ctx, question = make_ids(T, seed=1), make_ids(5, seed=2)
    cache = kvstack.compress(model, ctx, recipe)
    unwrap = lambda enc: enc.inner if isinstance(enc, KeptRows) else enc  # sink rows kept exact beside it
    assert any(isinstance(unwrap(layer.keys), kind) for layer in cache.layers)
    reference = dense_copy(cache)
    got = kvstack.generate(model, cache, question, max_new_tokens=8)
    assert got.numel() >= 1
    assert torch.equal(got, kvstack.generate(model, reference, question, max_new_tokens=8))
    torch.testing.assert_close(next_logits(model, cache, 7), next_logits(model, reference, 7), atol=1e-5, rtol=0)
    full = kvstack.compress(model, ctx, "identity")
    assert not torch.equal(next_logits(model, cache, 7), next_logits(model, full, 7))  # really compressed


@torch.no_grad()
def test_snapkv_svd_int8_stack_end_to_end(tiny_model, make_ids):
    model = tiny_model("llama")
    ctx = make_ids(T, seed=3)
    selected = kvstack.compress(model, ctx, "snapkv:0.5")
    stacked = kvstack.compress(model, ctx, "snapkv:0.5 > svd:rank=8 > int8")
    assert stacked.recipe == "snapkv:0.5 > svd:rank=8 > int8"
    assert [layer.lengths for layer in stacked.layers] == [layer.lengths for layer in selected.layers]
    assert stacked.nbytes < selected.nbytes / 2  # 8 int8 coefficients per row, plus the fitted fp32 basis
    # int8 quantizes the rank-8 coefficients: rows lie in an 8-dimensional subspace per head, plus the
    # 4 sink rows kept exact
    rows = stacked.layers[0].keys.decode().view(2, -1, 16)
    s = torch.linalg.svdvals(rows[0].double())
    assert float((s[12:] ** 2).sum() / (s**2).sum()) < 1e-3


@torch.no_grad()
def test_pre_rope_projection_through_generate(tiny_model, make_ids):
    model = tiny_model("llama")
    info = model_info(model)
    full = prefill(model, info, make_ids(T, seed=4), frozenset()).cache
    ctx = StageContext(info.num_query_heads, info.num_kv_heads, info.head_dim, info.num_layers,
                       captures={NEED_ROPE: rope_tables(model)})
    pre = Recipe.parse("svd:rank=8,rope=pre").apply(full, ctx)
    post = Recipe.parse("svd:rank=8").apply(full, ctx)
    assert pre.nbytes == post.nbytes  # same coefficients and basis; positions implicit (nothing evicted)
    question = make_ids(5, seed=5)
    reference = dense_copy(pre)
    assert torch.equal(kvstack.generate(model, pre, question, max_new_tokens=6),
                       kvstack.generate(model, reference, question, max_new_tokens=6))
    torch.testing.assert_close(next_logits(model, pre, 9), next_logits(model, reference, 9), atol=1e-5, rtol=0)
