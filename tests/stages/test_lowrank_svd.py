"""svd: per-head low rank against float64 references (Eckart-Young), exact byte counts,
eviction after projection, quantized coefficients, and pre-RoPE projection."""

from __future__ import annotations

import math

import pytest
import torch

from kvstack.kv import DenseRows, KVCache, KVLayer
from kvstack.rows.quant import QuantRows
from kvstack.stack import Recipe, StageContext
from kvstack.stages.common.inner import quantize_encoded
from kvstack.stages.common.rope import NEED_ROPE, Rotary
from kvstack.stages.lowrank.fit import rank_for_energy
from kvstack.stages.lowrank.rows import LowRankRows
from kvstack.stages.lowrank.svd import Svd
from kvstack.stages.quant.uniform import Int4

H, T, D = 3, 40, 16
CTX = StageContext(num_query_heads=6, num_kv_heads=H, head_dim=D, num_layers=1)


def layer_of(dtype=torch.float64, seed: int = 0, heads: int = H, tokens: int = T, dim: int = D) -> KVLayer:
    """Rows with a decaying spectrum (so every rank loses a different, nonzero energy)."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.logspace(0, -2, dim, dtype=torch.float64)
    k = torch.randn(heads, tokens, dim, generator=g, dtype=torch.float64) * scale
    v = torch.randn(heads, tokens, dim, generator=g, dtype=torch.float64) * scale.flip(0)
    mix = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))[0]
    return KVLayer.from_dense((k @ mix).to(dtype), (v @ mix).to(dtype))


def cache_of(*layers: KVLayer) -> KVCache:
    return KVCache(list(layers), torch.zeros(T, dtype=torch.int32), layers[0].keys.dtype)


def per_head(rows: torch.Tensor, lengths) -> list[torch.Tensor]:
    return list(torch.split(rows, list(lengths)))


def storage_bytes(*tensors: torch.Tensor) -> int:
    """Bytes of the distinct storages behind ``tensors``: what is really allocated."""
    seen = {}
    for t in tensors:
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def test_full_rank_reconstructs_exactly():
    layer = layer_of()
    out = Svd(rank=D, sink=0).apply_layer(0, layer, CTX)
    assert isinstance(out.keys, LowRankRows) and out.keys.rank == D
    torch.testing.assert_close(out.keys.decode(), layer.keys.decode(), atol=1e-12, rtol=0)
    torch.testing.assert_close(out.values.decode(), layer.values.decode(), atol=1e-12, rtol=0)


@pytest.mark.parametrize("rank", [1, 3, 8, 15])
def test_error_at_rank_r_is_the_svd_tail_energy(rank):
    layer = layer_of(seed=rank)
    out = Svd(rank=rank, sink=0).apply_layer(0, layer, CTX)
    for enc, orig in ((out.keys, layer.keys), (out.values, layer.values)):
        for got, x in zip(per_head(enc.decode(), layer.lengths), per_head(orig.decode(), layer.lengths)):
            s = torch.linalg.svdvals(x)  # independent float64 reference
            tail = float((s[rank:] ** 2).sum())
            err = float(((got - x) ** 2).sum())
            assert tail > 0 and err == pytest.approx(tail, rel=1e-9)


def test_energy_picks_the_smallest_rank_that_keeps_it_in_every_head():
    layer = layer_of(seed=5)
    for energy in (0.5, 0.9, 0.99, 1.0):
        out = Svd(energy=energy, sink=0).apply_layer(0, layer, CTX)
        needed = []
        for x in per_head(layer.keys.decode(), layer.lengths):
            power = torch.linalg.svdvals(x) ** 2
            kept = [float(power[:r].sum() / power.sum()) for r in range(1, D + 1)]
            needed.append(next(r for r, k in zip(range(1, D + 1), kept) if k >= energy - 1e-12))
        assert out.keys.rank == max(needed)
        for got, x in zip(per_head(out.keys.decode(), layer.lengths), per_head(layer.keys.decode(), layer.lengths)):
            assert 1 - float(((got - x) ** 2).sum() / (x**2).sum()) >= energy - 1e-9


def test_rank_for_energy_brute_force():
    s = torch.tensor([4.0, 2.0, 1.0, 0.5, 0.0])
    power = s**2
    for e in (0.01, 0.75, 0.76, 0.95, 0.99, 1.0):
        brute = next(r for r in range(1, 6) if float(power[:r].sum() / power.sum()) >= e - 1e-12)
        assert rank_for_energy(s, e) == brute


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_nbytes_hand_count_and_nothing_else_allocated(dtype):
    layer = layer_of(dtype)
    r = 5
    out = Svd(rank=r, sink=0).apply_layer(0, layer, CTX)
    e = torch.empty((), dtype=dtype).element_size()
    coefficients, basis = H * T * r * e, H * D * r * e
    assert out.keys.nbytes == coefficients + basis and out.values.nbytes == coefficients + basis
    assert out.nbytes == 2 * (coefficients + basis)
    for enc in (out.keys, out.values):
        assert enc.coefficients.data.dtype == dtype and enc.basis.dtype == dtype
        assert storage_bytes(enc.coefficients.data, enc.basis) == enc.nbytes  # no hidden full fit kept alive
    assert out.keys.decode().dtype == dtype


def test_target_k_leaves_values_untouched():
    layer = layer_of()
    out = Svd(rank=4, target="k", sink=0).apply_layer(0, layer, CTX)
    assert isinstance(out.keys, LowRankRows) and out.values is layer.values


def test_eviction_after_projection_keeps_coefficients_and_the_basis():
    layer = layer_of()
    out = Recipe.parse("svd:rank=6,sink=0 > streaming:sink=2,window=10").apply(cache_of(layer), CTX).layers[0]
    assert isinstance(out.keys, LowRankRows) and out.lengths == (12, 12, 12)
    full = Svd(rank=6, sink=0).apply_layer(0, layer, CTX)
    keep = torch.cat([torch.arange(0, 2), torch.arange(T - 10, T)])
    rows = torch.cat([keep + h * T for h in range(H)])
    torch.testing.assert_close(out.keys.decode(), full.keys.decode()[rows], atol=0, rtol=0)
    assert out.keys.nbytes == 3 * 12 * 6 * 8 + H * D * 6 * 8  # the basis stays per head


def test_ragged_heads_select_per_head():
    enc = Svd(rank=4, sink=0).apply_layer(0, layer_of(), CTX).keys
    rows = torch.cat([torch.tensor([0, 5]), T + torch.arange(0, 0), 2 * T + torch.tensor([1, 2, 39])])
    sel = enc.select(rows)
    assert sel.segments == (2, 0, 3)
    torch.testing.assert_close(sel.decode(), enc.decode()[rows], atol=1e-14, rtol=0)


def test_quantized_coefficients_in_stage_hand_count():
    layer = layer_of(torch.float32)
    r, group = 6, 16
    out = Svd(rank=r, bits=4, qgroup=group, sink=0).apply_layer(0, layer, CTX)
    coef = out.keys.coefficients
    assert isinstance(coef, QuantRows) and coef.bits == 4 and coef.axis == "channel"
    groups = H * math.ceil(T / group)
    codes = H * T * math.ceil(r / 2)  # two 4-bit codes per byte, each row packed on its own
    assert out.keys.nbytes == codes + 2 * groups * r * 2 + H * D * r * 4  # + fp16 scales/zeros + fp32 basis
    exact = Svd(rank=r, sink=0).apply_layer(0, layer, CTX).keys
    # the error of the rows is the coefficient error rotated by an orthonormal basis: same size
    dq = (coef.decode() - exact.coefficients.decode()).norm()
    assert float((out.keys.decode() - exact.decode()).norm()) == pytest.approx(float(dq), rel=1e-4)


def test_quantizer_after_svd_quantizes_the_coefficients():
    layer = layer_of(torch.float32)
    low = Svd(rank=6, sink=0).apply_layer(0, layer, CTX).keys
    int4 = Int4(group=64, axis="channel", rot=False)
    q = quantize_encoded(low, layer.lengths, int4.quantize)
    assert isinstance(q, LowRankRows) and isinstance(q.coefficients, QuantRows)
    assert q.coefficients.shape == (H * T, 6)  # 6 codes per row, not head_dim
    whole = quantize_encoded(layer.keys, layer.lengths, int4.quantize)
    assert isinstance(whole, QuantRows) and whole.shape == (H * T, D)  # plain rows: quantized as they are
    assert q.coefficients.nbytes < whole.nbytes / 2  # (the fp32 basis is extra, and big at this size)
    torch.testing.assert_close(
        q.decode(), LowRankRows(DenseRows(q.coefficients.decode()), low.basis, low.segments, True, torch.float32)
        .decode(), atol=1e-6, rtol=0,
    )


def rope_layer(rank: int, seed: int = 0) -> tuple[KVLayer, Rotary]:
    """Keys that are exactly rank ``rank`` *before* RoPE, then rotated like a model's."""
    g = torch.Generator().manual_seed(seed)
    rot = Rotary(inv_freq=1.0 / (100.0 ** (torch.arange(0, D, 2).float() / D)))
    pre = torch.randn(H, T, rank, generator=g, dtype=torch.float64) @ torch.randn(H, rank, D, generator=g,
                                                                                   dtype=torch.float64)
    pos = torch.arange(T)
    keys = torch.stack([rot.rotate(pre[h], pos) for h in range(H)])
    return KVLayer.from_dense(keys, torch.randn(H, T, D, generator=g, dtype=torch.float64)), rot


def test_pre_rope_projection_is_exact_where_post_rope_is_not():
    layer, rot = rope_layer(rank=3)
    ctx = StageContext(6, H, D, 1, captures={NEED_ROPE: {0: rot}})
    pre = Svd(rank=3, rope="pre", target="k", sink=0).apply_layer(0, layer, ctx)
    post = Svd(rank=3, target="k", sink=0).apply_layer(0, layer, ctx)
    x = layer.keys.decode()
    assert float((pre.keys.decode() - x).norm() / x.norm()) < 1e-6  # rotation in float32 angles
    assert float((post.keys.decode() - x).norm() / x.norm()) > 0.1
    assert pre.keys.positions is None  # nothing evicted: positions are implicit, no bytes spent


def test_pre_rope_after_eviction_stores_positions_and_counts_them():
    layer, rot = rope_layer(rank=3, seed=1)
    ctx = StageContext(6, H, D, 1, captures={NEED_ROPE: {0: rot}})
    cache = Recipe.parse("streaming:sink=1,window=7 > svd:rank=3,rope=pre,target=k,sink=0").apply(cache_of(layer), ctx)
    out = cache.layers[0]
    assert out.keys.positions.dtype == torch.int32 and out.keys.positions.numel() == H * 8
    assert out.keys.nbytes == H * 8 * 3 * 8 + H * D * 3 * 8 + H * 8 * 4
    kept = torch.cat([torch.tensor([0]), torch.arange(T - 7, T)])
    expect = torch.cat([layer.keys.decode()[kept + h * T] for h in range(H)])
    torch.testing.assert_close(out.keys.decode(), expect, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.keys.select(torch.tensor([0, 9])).decode(), expect[[0, 9]], atol=1e-5, rtol=0)
