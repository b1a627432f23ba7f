"""The numbers `kvstack inspect` reports, each against a hand computation on data built to have it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kvstack.errors import InputError
from kvstack.inspect import stats
from kvstack.inspect.report import inspect_cache
from kvstack.kv import KVCache, KVLayer


def test_outlier_ratio_of_one_loud_channel():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 500, 8, generator=g, dtype=torch.float64)
    x[1, :, 3] *= 20.0
    mags = stats.channel_magnitudes(x)
    assert mags.shape == (16,)
    hand = np.abs(x.numpy()).mean(axis=1).reshape(-1)
    np.testing.assert_allclose(mags.numpy(), hand, rtol=1e-12)
    assert stats.outlier_ratio(mags) == pytest.approx(hand.max() / np.median(hand), rel=1e-12)
    assert stats.outlier_ratio(mags) > 15


def test_excess_kurtosis_hand_values():
    assert stats.excess_kurtosis(torch.tensor([1.0, -1.0] * 50)) == pytest.approx(-2.0)  # two-point: 1 - 3
    x = np.array([0.0, 0.0, 0.0, 0.0, 10.0])
    c = x - x.mean()
    hand = (c**4).mean() / (c**2).mean() ** 2 - 3
    assert stats.excess_kurtosis(torch.tensor(x)) == pytest.approx(hand, rel=1e-12)


def test_ranks_of_data_with_a_known_spectrum():
    q = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))[0]
    u = torch.linalg.qr(torch.randn(40, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2)))[0]
    s = torch.tensor([3.0, 2.0, 1.0, 0.5, 0.1, 0.0], dtype=torch.float64)
    x = u @ torch.diag(s) @ q.T
    power = (s**2).cumsum(0) / (s**2).sum()  # 0.632, 0.913, 0.983, 0.9999, 1, 1
    assert power[1] >= 0.9 > power[0] and power[2] >= 0.95 > power[1] and power[3] >= 0.99 > power[2]
    assert stats.ranks_for(x) == [2, 3, 4]


def test_cosine_and_mergeable_share_by_hand():
    a = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]], dtype=torch.float64)  # [H=1, T=3, 2]
    b = torch.tensor([[[1.0, 0.1], [1.0, 0.0], [-1.0, -1.0]]], dtype=torch.float64)
    cos = [1 / math.sqrt(1.01), 0.0, -1.0]
    assert stats.mean_cosine(a, b) == pytest.approx(sum(cos) / 3, rel=1e-12)
    dist = [math.acos(c) / math.pi for c in cos]  # 0.032, 0.5, 1.0
    assert stats.mergeable_share(a, b, 0.1) == pytest.approx(1 / 3)
    assert stats.mergeable_share(a, b, dist[1] + 1e-9) == pytest.approx(2 / 3)
    longer = torch.cat([torch.randn(1, 4, 2, dtype=torch.float64), b], dim=1)  # a sliding layer keeps a suffix
    assert stats.mean_cosine(a, longer) == pytest.approx(sum(cos) / 3, rel=1e-12)
    mat = stats.cosine_matrix([a, b, a])
    assert mat[0, 2] == pytest.approx(1.0) and mat[0, 1] == mat[1, 0] == pytest.approx(sum(cos) / 3)


def test_sink_share_against_an_explicit_attention_matrix():
    t, first = 12, 3
    g = torch.Generator().manual_seed(3)
    probs = torch.zeros(2, t, t, dtype=torch.float64)  # [heads, query, key]
    for q in range(t):
        probs[:, q, : q + 1] = torch.softmax(torch.randn(2, q + 1, generator=g, dtype=torch.float64), -1)
    received = probs.sum(dim=1)  # what the prefill capture holds: attention each key received
    hand = probs[:, :, :first].sum(dim=(1, 2)) / t
    torch.testing.assert_close(stats.sink_share(received, first), hand, atol=1e-12, rtol=0)


@pytest.mark.parametrize("window", [None, 4])
def test_uniform_sink_share_brute_force(window):
    t, first = 15, 3
    mat = torch.zeros(t, t, dtype=torch.float64)
    for q in range(t):
        lo = 0 if window is None else max(0, q - window + 1)
        mat[q, lo : q + 1] = 1.0 / (q + 1 - lo)
    brute = float(mat[:, :first].sum() / t)
    assert stats.uniform_sink_share(t, first, window) == pytest.approx(brute, rel=1e-12)


def test_inspect_cache_sees_identical_layers_and_low_rank_keys():
    g = torch.Generator().manual_seed(4)
    h, t, d = 2, 30, 8
    k = torch.randn(h, t, 2, generator=g) @ torch.randn(h, 2, d, generator=g)  # rank 2 per head
    v = torch.randn(h, t, d, generator=g)
    layers = [KVLayer.from_dense(k, v), KVLayer.from_dense(3 * k, v), KVLayer.from_dense(torch.randn(h, t, d), v)]
    attention = {i: torch.cat([torch.full((4, 2), 10.0), torch.ones(4, t - 2)], dim=1) for i in range(3)}
    report = inspect_cache(KVCache(layers, torch.zeros(t, dtype=torch.int32), torch.float32), attention, sink_tokens=2)
    first = report.layers[0]
    assert first.k_rank[2] <= 2 and first.cos_next_k == pytest.approx(1.0, abs=1e-6)
    assert first.cos_next_v == pytest.approx(1.0, abs=1e-6) and first.mergeable_next == pytest.approx(1.0)
    assert report.layers[2].cos_next_k is None
    assert first.sink_share == pytest.approx(20 / (20 + t - 2))
    assert first.kpre_rank is None and report.cos_k.shape == (3, 3)
    assert report.key_channels.shape == (3, h * d)
    assert report.to_json()["layers"][0]["k_rank"] == first.k_rank
    text = "\n".join(report.advice())
    assert "directions per head" in text and "first 2 tokens" in text


def test_inspect_refuses_compressed_caches():
    layer = KVLayer.from_dense(torch.randn(2, 10, 4), torch.randn(2, 10, 4))
    ragged = layer.select_rows([torch.arange(3), torch.arange(5)])
    with pytest.raises(InputError, match="inspect a full cache"):
        inspect_cache(KVCache([ragged], torch.zeros(10, dtype=torch.int32), torch.float32))
