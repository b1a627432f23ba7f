"""MiniCache: SLERP against hand computations, merged rows rebuilt from the shared direction and
each layer's magnitude, retained tokens exact, bytes counted by hand with the direction once."""

from __future__ import annotations

import math

import pytest
import torch

from kvstack.errors import RecipeError
from kvstack.kv import DenseRows, KVCache, KVLayer
from kvstack.stack import Recipe, StageContext
from kvstack.stages.crosslayer.merge import MergedRows, angular_distance, merge_pair, pack_bits, slerp, unpack_bits
from kvstack.stages.crosslayer.share import MiniCache, pair_layers

H, T, D = 2, 24, 8
CTX = StageContext(num_query_heads=4, num_kv_heads=H, head_dim=D, num_layers=4)


def test_slerp_hand_computed_on_a_quarter_circle():
    a, b = torch.tensor([[1.0, 0.0]], dtype=torch.float64), torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    for w in (0.0, 0.25, 0.5, 0.6, 1.0):
        angle = w * math.pi / 2  # SLERP walks the arc at constant speed
        expect = torch.tensor([[math.cos(angle), math.sin(angle)]], dtype=torch.float64)
        torch.testing.assert_close(slerp(a, b, w), expect, atol=1e-15, rtol=0)


def test_slerp_matches_the_formula_on_random_unit_vectors():
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(50, D, generator=g, dtype=torch.float64), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(50, D, generator=g, dtype=torch.float64), dim=-1)
    w = 0.3
    for i in range(50):
        omega = math.acos(float(a[i] @ b[i]))
        hand = (math.sin((1 - w) * omega) * a[i] + math.sin(w * omega) * b[i]) / math.sin(omega)
        torch.testing.assert_close(slerp(a[i : i + 1], b[i : i + 1], w)[0], hand, atol=1e-14, rtol=0)
    same = slerp(a[:1], a[:1], 0.5)  # parallel: the direction itself, no division by sin(0)
    torch.testing.assert_close(same, a[:1], atol=1e-15, rtol=0)


def test_bits_round_trip():
    mask = torch.tensor([True, False, False, True, True, False, True, False, True, True, False])
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == 2 and int(packed[0]) == 0b01011001
    assert torch.equal(unpack_bits(packed, 11), mask)


def pair(seed: int = 0, noise: float = 0.05, far: tuple[int, ...] = (3, 10)):
    """Two layers of rows: b is a rescaled, slightly turned copy of a, except the rows ``far``."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(T, D, generator=g, dtype=torch.float64)
    b = (a + noise * torch.randn(T, D, generator=g, dtype=torch.float64)) * (
        1 + torch.rand(T, 1, generator=g, dtype=torch.float64)
    )
    for i in far:
        b[i] = -a[i]  # opposite direction: never mergeable
    return a, b


def test_merge_pair_rebuilds_from_shared_direction_and_own_magnitudes():
    a, b = pair()
    idx = torch.arange(T)
    owner, partner, merged = merge_pair(a, b, idx, idx, t=0.15, w=0.5)
    dist = angular_distance(a, b)
    ok = dist <= 0.15
    assert merged == int(ok.sum()) == T - 2 and not ok[3] and not ok[10]
    assert partner.directions is owner.directions and owner.owns_directions and not partner.owns_directions
    hand = slerp(a[ok] / a[ok].norm(dim=-1, keepdim=True), b[ok] / b[ok].norm(dim=-1, keepdim=True), 0.5)
    torch.testing.assert_close(owner.decode()[ok], hand * a[ok].norm(dim=-1, keepdim=True), atol=1e-14, rtol=0)
    torch.testing.assert_close(partner.decode()[ok], hand * b[ok].norm(dim=-1, keepdim=True), atol=1e-14, rtol=0)
    assert torch.equal(owner.decode()[~ok], a[~ok]) and torch.equal(partner.decode()[~ok], b[~ok])  # retained
    assert torch.allclose(owner.decode().norm(dim=-1), a.norm(dim=-1), atol=1e-12)  # magnitudes kept


def test_merged_bytes_hand_count_direction_once():
    a, b = pair()
    a, b = a.float(), b.float()
    idx = torch.arange(T)
    owner, partner, merged = merge_pair(a, b, idx, idx, t=0.15, w=0.5)
    m, k, e = merged, T - merged, 4
    bits = math.ceil(T / 8)
    assert owner.nbytes == m * D * e + m * e + k * D * e + bits
    assert partner.nbytes == m * e + k * D * e + bits
    dense = 2 * T * D * e
    saving = 1 - (owner.nbytes + partner.nbytes) / dense
    assert saving == pytest.approx((m * D * e - 2 * m * e - 2 * bits) / dense)  # ~ half of a merged layer
    assert 0.3 < saving < 0.5


def layers_from(rows: list[torch.Tensor]) -> KVCache:
    layers = [KVLayer.from_dense(x.view(1, T, D).repeat(H, 1, 1), x.view(1, T, D).repeat(H, 1, 1) * 2) for x in rows]
    return KVCache(layers, torch.zeros(T, dtype=torch.int32), rows[0].dtype)


def test_stage_merges_pairs_from_the_middle_and_counts_bytes_in_the_cache():
    a, b = pair()
    c, d = pair(seed=1)
    cache = layers_from([a, b, c, d])
    out = MiniCache(start=0.5, sink=0).apply(cache, CTX, {0, 1, 2, 3})
    assert out.layers[0] is cache.layers[0] and out.layers[1] is cache.layers[1]  # above the middle: untouched
    k2, k3 = out.layers[2].keys, out.layers[3].keys
    assert isinstance(k2, MergedRows) and isinstance(k3, MergedRows) and k3.directions is k2.directions
    assert out.nbytes == sum(x.nbytes for x in out.layers) < cache.nbytes
    share = 1 - (out.layers[2].nbytes + out.layers[3].nbytes) / (cache.layers[2].nbytes + cache.layers[3].nbytes)
    assert 0.3 < share < 0.5
    assert out.stats["minicache_merged"] == pytest.approx(k2.directions.shape[0] / (H * T), rel=1e-12)


def test_orthogonal_layers_are_left_dense():
    g = torch.Generator().manual_seed(3)
    rows = [torch.randn(T, D, generator=g, dtype=torch.float64) for _ in range(2)]
    cache = layers_from(rows)
    out = MiniCache(start=0.0, t=0.05, sink=0).apply(cache, CTX, {0, 1})
    assert out.layers[0].keys is cache.layers[0].keys and out.nbytes == cache.nbytes


def test_pairs_do_not_overlap_and_respect_scope():
    assert pair_layers(set(range(30)), 30, 0.5) == [(i, i + 1) for i in range(15, 29, 2)]  # 29 has no partner
    assert pair_layers(set(range(5)), 5, 0.0) == [(0, 1), (2, 3)]
    assert pair_layers({0, 2, 3}, 4, 0.0) == [(2, 3)]


def test_eviction_after_merging_copies_directions_and_counts_them():
    a, b = pair()
    cache = layers_from([a, b])
    recipe = Recipe.parse("minicache:start=0,sink=0 > streaming:sink=1,window=5")
    merged = MiniCache(start=0.0, sink=0).apply(cache, CTX, {0, 1})
    out = recipe.apply(cache, CTX)
    k0, k1 = out.layers[0].keys, out.layers[1].keys
    assert isinstance(k1, MergedRows) and k1.owns_directions and k1.directions is not k0.directions
    keep = torch.cat([torch.tensor([0]), torch.arange(T - 5, T)])
    rows = torch.cat([keep + h * T for h in range(H)])
    assert torch.equal(k1.decode(), merged.layers[1].keys.decode()[rows])
    m = int(unpack_bits(k1.merged_bits, k1.rows).sum())
    assert k1.nbytes == m * D * 8 + m * 8 + (H * 6 - m) * D * 8 + math.ceil(H * 6 / 8)


def test_layers_holding_different_tokens_merge_the_common_ones():
    a, b = pair(far=())
    cache = layers_from([a, b])
    first = cache.layers[0].select_rows([torch.arange(0, 20)] * H)  # tokens 0..19
    second = cache.layers[1].select_rows([torch.arange(4, 24)] * H)  # tokens 4..23
    out = MiniCache(start=0.0, sink=0).apply(KVCache([first, second], cache.context_ids, torch.float64), CTX, {0, 1})
    m0 = unpack_bits(out.layers[0].keys.merged_bits, out.layers[0].keys.rows).view(H, 20)
    m1 = unpack_bits(out.layers[1].keys.merged_bits, out.layers[1].keys.rows).view(H, 20)
    assert not m0[:, :4].any() and m0[:, 4:].all()  # tokens 0..3 exist only in the first layer
    assert m1[:, :16].all() and not m1[:, 16:].any()  # tokens 20..23 only in the second
    assert torch.equal(out.layers[1].keys.decode().view(H, 20, D)[:, 16:], second.keys.decode().view(H, 20, D)[:, 16:])


@pytest.mark.parametrize("text, what", [
    ("minicache:start=1", "start=1.0 must be in \\[0, 1\\)"),
    ("minicache:start=-0.1", "start=-0.1"),
    ("minicache:t=1.5", "t=1.5 must be in \\[0, 1\\]"),
    ("minicache:w=2", "w=2.0"),
])
def test_bad_parameters_say_what_to_do(text, what):
    with pytest.raises(RecipeError, match=what):
        Recipe.parse(text)


def test_dense_rows_remain_dense_rows_when_nothing_merges():
    g = torch.Generator().manual_seed(4)
    cache = layers_from([torch.randn(T, D, generator=g), torch.randn(T, D, generator=g)])
    out = MiniCache(start=0.0, t=0.0, sink=0).apply(cache, CTX, {0, 1})
    assert all(isinstance(layer.keys, DenseRows) for layer in out.layers)
