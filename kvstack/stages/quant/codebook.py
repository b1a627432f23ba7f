"""Codebooks fitted by k-means: scalar levels (KVQuant's non-uniform datatype) and vector centroids
(coupled quantization), batched over many independent groups, deterministic.

Scalar: the exact optimum of a fine weighted histogram (1-D k-means is solvable by dynamic
programming), then Lloyd's iterations on the points; the nearest level is found by a binary
search over the midpoints, so encoding is exact nearest (ties go to the lower level).
Vector: Lloyd's algorithm on ``c``-dimensional points from seeded k-means++ starting
centroids; the nearest centroid is an ``argmin`` of squared distances.
Both subsample large inputs with a fixed stride (fitting, not encoding).
"""

from __future__ import annotations

import torch

MAX_FIT_POINTS = 1 << 15


def stride_sample(x: torch.Tensor, limit: int, dim: int) -> torch.Tensor:
    n = x.shape[dim]
    if n <= limit:
        return x
    idx = torch.linspace(0, n - 1, limit).round().long()
    return x.index_select(dim, idx)


def _optimal_levels(u: torch.Tensor, w: torch.Tensor, k: int, bins: int) -> torch.Tensor:
    """Globally optimal ``k`` levels of a ``bins``-bin weighted histogram of each group (dynamic programming).

    Lloyd's iterations only find a local optimum (from quantile starts they crowd the levels
    into dense regions); in 1-D the optimum over contiguous runs of sorted bins is exact by DP.
    """
    g = u.shape[0]
    lo, hi = u.amin(1, keepdim=True), u.amax(1, keepdim=True)
    width = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    idx = ((u - lo) / width * bins).long().clamp_(0, bins - 1)
    zeros = torch.zeros(g, bins, dtype=u.dtype)
    w_b, s1_b, s2_b = (zeros.clone().scatter_add_(1, idx, t) for t in (w, w * u, w * u * u))
    cum = lambda t: torch.nn.functional.pad(torch.cumsum(t, 1), (1, 0))  # [g, bins + 1]
    wc, s1, s2 = cum(w_b), cum(s1_b), cum(s2_b)
    dw = wc[:, None, :] - wc[:, :, None]  # [g, i, j]: bins i..j-1
    d1 = s1[:, None, :] - s1[:, :, None]
    cost = (s2[:, None, :] - s2[:, :, None]) - d1 * d1 / dw.clamp_min(1e-300)
    ii = torch.arange(bins + 1)
    cost = cost.clamp_min(0).masked_fill((ii[:, None] >= ii[None, :])[None], float("inf"))
    best, choice = cost[:, 0, :], []
    for _ in range(1, k):
        cand = best[:, :, None] + cost  # previous runs end at i, the new run is bins i..j-1
        best, arg = cand.min(1)
        choice.append(arg)
    cuts = torch.full((g, k + 1), bins, dtype=torch.long)
    cuts[:, 0] = 0
    j = torch.full((g,), bins, dtype=torch.long)
    for m in range(k - 1, 0, -1):
        j = choice[m - 1].gather(1, j[:, None])[:, 0]
        cuts[:, m] = j
    a, b = cuts[:, :-1], cuts[:, 1:]
    mass = wc.gather(1, b) - wc.gather(1, a)
    mean = (s1.gather(1, b) - s1.gather(1, a)) / mass.clamp_min(1e-300)
    middle = lo + (a + b).to(u.dtype) / (2 * bins) * width  # empty runs (more levels than data): bin centers
    return torch.sort(torch.where(mass > 0, mean, middle), dim=1).values


def fit_levels(
    u: torch.Tensor, k: int, weights: torch.Tensor | None = None, iters: int = 10, bins: int = 256
) -> torch.Tensor:
    """``[G, k]`` ascending levels minimising the (weighted) squared error of ``u [G, N]`` per group.

    The optimum of a ``bins``-bin histogram (exact DP), refined by Lloyd's iterations on the points.
    """
    device = u.device  # fitted on the CPU (a small sequential DP), returned where the data lives
    u = stride_sample(u.double().cpu(), MAX_FIT_POINTS, 1)
    w = torch.ones_like(u) if weights is None else stride_sample(weights.double().cpu(), MAX_FIT_POINTS, 1)
    levels = _optimal_levels(u, w, k, bins)
    for _ in range(iters):
        codes = nearest_level(u, levels)
        sums = torch.zeros_like(levels).scatter_add_(1, codes, u * w)
        mass = torch.zeros_like(levels).scatter_add_(1, codes, w)
        new = torch.sort(torch.where(mass > 0, sums / mass.clamp_min(1e-300), levels), dim=1).values
        if torch.equal(new, levels):
            break
        levels = new
    return levels.to(device)


def nearest_level(u: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of the ascending ``levels [G, k]`` for every ``u [G, N]`` (int64)."""
    mids = (levels[:, 1:] + levels[:, :-1]) / 2
    return torch.searchsorted(mids.to(device=u.device, dtype=u.dtype).contiguous(), u.contiguous(), right=False)


def _kmeans_plus_plus(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ starting centroids ``[G, k, c]``: each next one drawn with probability ~ squared distance."""
    g, n, _ = x.shape
    rows = torch.arange(g)
    cent = x.new_empty(g, k, x.shape[2])
    cent[:, 0] = x[rows, torch.randint(n, (g,), generator=gen)]
    d2 = ((x - cent[:, :1]) ** 2).sum(-1)
    for j in range(1, k):
        total = d2.sum(1, keepdim=True)
        probs = torch.where(total > 0, d2 / total.clamp_min(1e-30), torch.full_like(d2, 1.0 / n))
        cent[:, j] = x[rows, torch.multinomial(probs, 1, generator=gen)[:, 0]]
        d2 = torch.minimum(d2, ((x - cent[:, j : j + 1]) ** 2).sum(-1))
    return cent


def fit_centroids(x: torch.Tensor, k: int, iters: int = 20, seed: int = 0, block: int = 8) -> torch.Tensor:
    """``[G, k, c]`` centroids minimising the squared error of the points ``x [G, N, c]`` per group."""
    device = x.device  # fitted on the CPU (seeded CPU generator: the same centroids on any device)
    x = stride_sample(x.float().cpu(), MAX_FIT_POINTS, 1)
    cent = _kmeans_plus_plus(x, k, torch.Generator().manual_seed(seed))
    g = x.shape[0]
    for a in range(0, g, block):  # blocks of groups bound the [block, N, k] distance matrix
        xs, cs = x[a : a + block], cent[a : a + block]
        for _ in range(iters):
            codes = nearest_centroid(xs, cs)
            idx = codes.unsqueeze(-1).expand_as(xs)
            sums = torch.zeros_like(cs).scatter_add_(1, idx, xs)
            count = torch.zeros(cs.shape[:2]).scatter_add_(1, codes, torch.ones_like(codes, dtype=torch.float32))
            new = torch.where(count.unsqueeze(-1) > 0, sums / count.clamp_min(1).unsqueeze(-1), cs)
            if torch.equal(new, cs):
                break
            cs = new
        cent[a : a + block] = cs
    return cent.to(device)


def nearest_centroid(x: torch.Tensor, centroids: torch.Tensor, block: int = 8) -> torch.Tensor:
    """Index of the nearest centroid ``[G, k, c]`` for every point ``x [G, N, c]`` (int64 ``[G, N]``)."""
    out = torch.empty(x.shape[:2], dtype=torch.long, device=x.device)
    centroids = centroids.to(x.device)
    for a in range(0, x.shape[0], block):
        xs, cs = x[a : a + block].to(centroids.dtype), centroids[a : a + block]
        d = (cs * cs).sum(-1).unsqueeze(1) - 2 * xs @ cs.mT  # |x|^2 is the same for every centroid
        out[a : a + block] = d.argmin(-1)
    return out
