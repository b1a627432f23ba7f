"""k-means codebooks and the sparse outlier table against brute-force float64 references."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstack.errors import InputError
from kvstack.stages.quant.codebook import fit_centroids, fit_levels, nearest_centroid, nearest_level
from kvstack.stages.quant.sparse import SparseOutliers, outlier_scores


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(2, 16), st.integers(1, 60), st.integers(0, 2**31 - 1))
def test_nearest_level_is_the_brute_force_nearest(groups, k, n, seed):
    g = torch.Generator().manual_seed(seed)
    levels = torch.sort(torch.rand(groups, k, generator=g, dtype=torch.float64), dim=1).values
    u = torch.rand(groups, n, generator=g, dtype=torch.float64)
    got = nearest_level(u, levels)
    dist = (u[:, :, None] - levels[:, None, :]).abs()
    best = dist.min(-1).values
    assert torch.equal(torch.gather(dist, 2, got[..., None])[..., 0], best)  # ties may pick either level


def test_fit_levels_is_a_lloyd_fixed_point_and_beats_uniform_levels():
    g = torch.Generator().manual_seed(0)
    u = torch.cat([torch.rand(2000, generator=g) * 0.1, 0.5 + torch.rand(500, generator=g) * 0.5]).double()
    levels = fit_levels(u[None], 8)[0]
    assert bool((levels[1:] >= levels[:-1]).all())
    codes = nearest_level(u[None], levels[None])[0]
    for j in range(8):  # each level is the mean of the points it serves
        assert float(levels[j]) == pytest.approx(float(u[codes == j].mean()), abs=1e-9)
    uniform = torch.linspace(1 / 16, 15 / 16, 8, dtype=torch.float64)
    err = lambda lv: float(((u - lv[nearest_level(u[None], lv[None])[0]]) ** 2).mean())
    assert err(levels) < 0.5 * err(uniform)


def test_fit_levels_weights_pull_levels_toward_heavy_points():
    u = torch.tensor([[0.0, 0.1, 0.9, 1.0]], dtype=torch.float64)
    plain = fit_levels(u, 1)[0, 0]
    heavy = fit_levels(u, 1, weights=torch.tensor([[1.0, 1.0, 1.0, 9.0]], dtype=torch.float64))[0, 0]
    assert float(plain) == pytest.approx(0.5) and float(heavy) == pytest.approx((0.0 + 0.1 + 0.9 + 9.0) / 12)


def test_vector_kmeans_recovers_separated_clusters_and_assigns_brute_force_nearest():
    g = torch.Generator().manual_seed(1)
    centers = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0], [5.0, 5.0]])
    x = (centers[torch.arange(400) % 4] + 0.05 * torch.randn(400, 2, generator=g))[None]
    cent = fit_centroids(x, 4)
    found = torch.sort(cent[0].round().sum(1) * 10 + cent[0].round()[:, 0]).values
    assert torch.equal(found, torch.sort(centers.sum(1) * 10 + centers[:, 0]).values)
    codes = nearest_centroid(x, cent)
    brute = torch.cdist(x[0].double(), cent[0].double()).argmin(1)
    assert torch.equal(codes[0], brute)


def reference_scores(x: torch.Tensor, segments, axis) -> torch.Tensor:
    """Loops: |x - median| / mean|x - median| per channel of a head (channel) or per row (token)."""
    out = torch.zeros_like(x)
    if axis == "token":
        for i in range(x.shape[0]):
            dev = (x[i] - x[i].median()).abs()
            out[i] = dev / (dev.mean() + 1e-12)
        return out
    start = 0
    for n in segments:
        for c in range(x.shape[1]):
            col = x[start : start + n, c]
            dev = (col - col.median()).abs()
            out[start : start + n, c] = dev / (dev.mean() + 1e-12)
        start += n
    return out


@pytest.mark.parametrize("axis", ["channel", "token"])
def test_outlier_table_holds_the_top_scores_exactly_and_survives_selection(axis):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(30, 8, generator=g, dtype=torch.float64)
    x[3, 2], x[17, 5] = 40.0, -25.0
    segments = (12, 18)
    scores = outlier_scores(x, segments, axis)
    torch.testing.assert_close(scores, reference_scores(x, segments, axis), atol=1e-12, rtol=0)
    table = SparseOutliers.top(x, scores, 0.05)
    assert table.count == 12 and table.nbytes == 12 * 4 + 12 * 2  # int32 index + fp16 value
    flat = torch.topk(scores.flatten(), 12).indices
    assert set(table.index.tolist()) == set(flat.tolist())
    assert {3 * 8 + 2, 17 * 8 + 5} <= set(table.index.tolist())
    restored = table.apply(torch.zeros(30, 8, dtype=torch.float64))
    mask = table.mask(30)
    assert torch.equal(restored[mask], x[mask].half().double())
    rows = torch.tensor([0, 3, 4, 17, 29])
    sel = table.select(rows, 30)
    torch.testing.assert_close(sel.apply(torch.zeros(5, 8, dtype=torch.float64)), restored[rows], atol=0, rtol=0)


def test_outliers_beyond_fp16_are_refused():
    x = torch.zeros(4, 4)
    x[0, 0] = 1e6
    with pytest.raises(InputError, match="float16"):
        SparseOutliers.top(x, x.abs(), 0.1)
