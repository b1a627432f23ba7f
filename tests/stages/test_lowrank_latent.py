"""latent: one joint K|V basis per layer against float64 references, the shared latent counted
once, eviction after it, and the layouts it refuses."""

from __future__ import annotations

import pytest
import torch

from kvstack.errors import RecipeError
from kvstack.kv import DenseRows, KVCache, KVLayer
from kvstack.stack import Recipe, StageContext
from kvstack.stages.lowrank.rows import JointRows
from kvstack.stages.lowrank.svd import Latent, joint_rows

H, T, D = 2, 48, 8
CTX = StageContext(num_query_heads=4, num_kv_heads=H, head_dim=D, num_layers=1)


def layer_of(dtype=torch.float64, seed: int = 0) -> KVLayer:
    g = torch.Generator().manual_seed(seed)
    scale = torch.logspace(0, -2, 2 * H * D, dtype=torch.float64)
    joint = torch.randn(T, 2 * H * D, generator=g, dtype=torch.float64) * scale
    joint = joint @ torch.linalg.qr(torch.randn(2 * H * D, 2 * H * D, generator=g, dtype=torch.float64))[0]
    k = joint[:, : H * D].reshape(T, H, D).transpose(0, 1)
    v = joint[:, H * D :].reshape(T, H, D).transpose(0, 1)
    return KVLayer.from_dense(k.to(dtype).contiguous(), v.to(dtype).contiguous())


def test_joint_rows_layout_is_keys_of_every_head_then_values():
    layer = layer_of()
    x = joint_rows(layer)
    k, v = layer.keys.decode().view(H, T, D), layer.values.decode().view(H, T, D)
    assert torch.equal(x[7, D : 2 * D], k[1, 7]) and torch.equal(x[7, H * D : H * D + D], v[0, 7])


def test_full_rank_is_exact():
    layer = layer_of()
    out = Latent(rank=2 * H * D, sink=0).apply_layer(0, layer, CTX)
    torch.testing.assert_close(out.keys.decode(), layer.keys.decode(), atol=1e-12, rtol=0)
    torch.testing.assert_close(out.values.decode(), layer.values.decode(), atol=1e-12, rtol=0)


@pytest.mark.parametrize("rank", [1, 5, 20])
def test_error_at_rank_r_is_the_tail_energy_of_the_joint_matrix(rank):
    layer = layer_of(seed=rank)
    out = Latent(rank=rank, sink=0).apply_layer(0, layer, CTX)
    s = torch.linalg.svdvals(joint_rows(layer))
    err = float(((out.keys.decode() - layer.keys.decode()) ** 2).sum()) + float(
        ((out.values.decode() - layer.values.decode()) ** 2).sum()
    )
    assert err == pytest.approx(float((s[rank:] ** 2).sum()), rel=1e-9)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_latent_is_stored_once_and_counted_once(dtype):
    layer = layer_of(dtype)
    r = 6
    out = Latent(rank=r, sink=0).apply_layer(0, layer, CTX)
    keys, values = out.keys, out.values
    assert isinstance(keys, JointRows) and isinstance(values, JointRows)
    assert keys.coefficients is values.coefficients  # one tensor, two readers
    e = torch.empty((), dtype=dtype).element_size()
    latent, block = T * r * e, H * D * r * e
    assert keys.nbytes == latent + block and values.nbytes == block
    assert out.nbytes == latent + 2 * block
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in (keys.coefficients.data, keys.block, values.block)}
    assert sum(storages.values()) == out.nbytes  # blocks are not views of the full [2Hd, 2Hd] fit


def test_eviction_after_latent_copies_and_counts_each_part():
    layer = layer_of(torch.float32)
    cache = KVCache([layer], torch.zeros(T, dtype=torch.int32), torch.float32)
    merged = Latent(rank=6, sink=0).apply_layer(0, layer, CTX)
    out = Recipe.parse("latent:rank=6,sink=0 > streaming:sink=1,window=9").apply(cache, CTX).layers[0]
    assert isinstance(out.keys, JointRows) and out.keys.tokens == 10
    assert out.keys.coefficients is not out.values.coefficients  # each select made its own copy
    assert out.keys.nbytes == out.values.nbytes == 10 * 6 * 4 + H * D * 6 * 4  # both copies counted
    keep = torch.cat([torch.tensor([0]), torch.arange(T - 9, T)])
    rows = torch.cat([keep + h * T for h in range(H)])
    torch.testing.assert_close(out.values.decode(), merged.values.decode()[rows], atol=1e-6, rtol=0)


def test_per_head_eviction_after_latent_falls_back_to_dense_rows():
    enc = Latent(rank=6, sink=0).apply_layer(0, layer_of(), CTX).keys
    rows = torch.tensor([0, 3, T + 1])
    sel = enc.select(rows)
    assert isinstance(sel, DenseRows) and sel.nbytes == 3 * D * 8
    assert torch.equal(sel.decode(), enc.decode()[rows])


def test_ragged_layer_is_refused_with_what_to_do():
    layer = layer_of().select_rows([torch.arange(10), torch.arange(5)])
    with pytest.raises(RecipeError, match="after per-head selection use svd"):
        Latent(rank=4, sink=0).apply_layer(0, layer, CTX)
    other = layer_of().select_rows([torch.arange(10), torch.arange(1, 11)])  # same count, other tokens
    with pytest.raises(RecipeError, match="different tokens"):
        Latent(rank=4, sink=0).apply_layer(0, other, CTX)
