"""xKV: one SVD over a group of adjacent layers, coefficients shared by the group and counted once."""

from __future__ import annotations

import pytest
import torch

from kvstack.errors import BudgetError, RecipeError
from kvstack.kv import KVCache, KVLayer
from kvstack.stack import Recipe, StageContext
from kvstack.stages.crosslayer.share import XKV
from kvstack.stages.lowrank.rows import JointRows

H, T, D, L = 2, 40, 8, 4
CTX = StageContext(num_query_heads=4, num_kv_heads=H, head_dim=D, num_layers=L)


def cache_of(dtype=torch.float64, seed: int = 0, layers: int = L) -> KVCache:
    """Layers whose keys share a few token directions (what xKV exploits), plus noise."""
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(T, 3, generator=g, dtype=torch.float64)
    out = []
    for _ in range(layers):
        k = shared @ torch.randn(3, H * D, generator=g, dtype=torch.float64)
        k = k + 0.05 * torch.randn(T, H * D, generator=g, dtype=torch.float64)
        v = torch.randn(T, H * D, generator=g, dtype=torch.float64)
        to_heads = lambda x: x.view(T, H, D).transpose(0, 1).to(dtype).contiguous()
        out.append(KVLayer.from_dense(to_heads(k), to_heads(v)))
    return KVCache(out, torch.zeros(T, dtype=torch.int32), dtype)


def stacked(cache: KVCache, members: list[int], part: str) -> torch.Tensor:
    rows = [getattr(cache.layers[i], part).decode().view(H, T, D).transpose(0, 1).reshape(T, H * D) for i in members]
    return torch.cat(rows, dim=1)


def test_full_rank_is_exact():
    cache = cache_of()
    out = XKV(group=2, rank=2 * H * D, sink=0).apply(cache, CTX, set(range(L)))
    for a, b in zip(out.layers, cache.layers):
        torch.testing.assert_close(a.keys.decode(), b.keys.decode(), atol=1e-12, rtol=0)
        torch.testing.assert_close(a.values.decode(), b.values.decode(), atol=1e-12, rtol=0)


@pytest.mark.parametrize("rank", [2, 3, 10])
def test_error_is_the_tail_energy_of_the_concatenated_layers(rank):
    cache = cache_of(seed=rank)
    out = XKV(group=2, rank=rank, target="k", sink=0).apply(cache, CTX, set(range(L)))
    for members in ([0, 1], [2, 3]):
        s = torch.linalg.svdvals(stacked(cache, members, "keys"))
        err = sum(float(((out.layers[i].keys.decode() - cache.layers[i].keys.decode()) ** 2).sum()) for i in members)
        assert err == pytest.approx(float((s[rank:] ** 2).sum()), rel=1e-9)
    assert out.layers[0].values is cache.layers[0].values  # target=k


def test_shared_coefficients_counted_once_per_group():
    cache = cache_of(torch.float32, layers=5)
    r = 4
    out = XKV(group=3, rank=r, sink=0).apply(cache, CTX, set(range(5)))
    first, second, third = (out.layers[i].keys for i in range(3))
    assert isinstance(first, JointRows) and first.coefficients is second.coefficients is third.coefficients
    assert first.owns_coefficients and not second.owns_coefficients and not third.owns_coefficients
    coef, block = T * r * 4, H * D * r * 4
    assert first.nbytes == coef + block and second.nbytes == third.nbytes == block
    # layers 3 and 4 form the second (shorter) group, with their own coefficients
    assert out.layers[3].keys.coefficients is out.layers[4].keys.coefficients is not first.coefficients
    assert out.nbytes == 2 * (2 * coef + 5 * block)  # K and V, two groups, five blocks


def test_groups_follow_the_layout_and_the_scope():
    cache = cache_of(layers=5)
    stage = XKV(group=2, rank=2, sink=0)
    assert stage.groups(cache, {0, 1, 2, 3, 4}) == [[0, 1], [2, 3], [4]]
    assert stage.groups(cache, {1, 2, 4}) == [[1, 2], [4]]
    evicted = cache.layers[2].select_rows([torch.arange(5, T)] * H)  # other tokens than its neighbours
    mixed = KVCache([*cache.layers[:2], evicted, *cache.layers[3:]], cache.context_ids, cache.dense_dtype)
    assert stage.groups(mixed, {0, 1, 2, 3, 4}) == [[0, 1], [2], [3, 4]]


def test_recipe_runs_and_per_head_eviction_is_refused():
    cache = cache_of()
    out = Recipe.parse("xkv:group=2,rank=3,sink=0 > streaming:sink=1,window=4").apply(cache, CTX)
    assert all(isinstance(layer.keys, JointRows) and layer.keys.tokens == 5 for layer in out.layers)
    ragged = cache.layers[0].select_rows([torch.arange(T), torch.arange(T - 1)])
    bad = KVCache([ragged, *cache.layers[1:]], cache.context_ids, cache.dense_dtype)
    with pytest.raises(RecipeError, match="after per-head selection use svd"):
        XKV(group=2, rank=3, sink=0).apply(bad, CTX, set(range(L)))


def test_bad_parameters():
    with pytest.raises(RecipeError, match="group=0"):
        Recipe.parse("xkv:group=0,rank=4")
    with pytest.raises(BudgetError, match="larger than group x kv_heads x head_dim=32"):
        XKV(group=2, rank=33, sink=0).apply(cache_of(), CTX, set(range(L)))
    with pytest.raises(RecipeError, match="rank=R"):
        Recipe.parse("xkv:group=2")
