"""Per-layer statistics of a full KV cache that predict which compression methods will work.

All in float64, on plain tensors (no model): each function is the definition of one number
``kvstack inspect`` reports, and the tests check them against hand computations.

* channel outliers (quantization): ``mean |x|`` per channel over tokens, and the ratio of the
  largest to the median channel; a large ratio means a few channels dominate a token's
  scale (quantize keys per channel, as KIVI does). Excess kurtosis of all values: heavy tails.
* effective rank (low rank): the fewest SVD directions that keep 90/95/99% of the energy.
* cross-layer similarity (MiniCache): mean cosine between the same head and token in two
  layers, and the share of tokens within a merge threshold of the next layer.
* attention sinks (StreamingLLM, sink=): the share of attention the first tokens receive.
"""

from __future__ import annotations

import math

import torch

from kvstack.stages.crosslayer.merge import angular_distance
from kvstack.stages.lowrank.fit import rank_for_energy

ENERGIES = (0.90, 0.95, 0.99)


def channel_magnitudes(rows: torch.Tensor) -> torch.Tensor:
    """``mean |x|`` over tokens for every (head, channel) of ``rows [H, T, d]``: ``[H * d]``."""
    return rows.double().abs().mean(dim=1).reshape(-1)


def outlier_ratio(magnitudes: torch.Tensor) -> float:
    """Largest channel magnitude over the median one (1 when all channels are alike)."""
    median = float(torch.quantile(magnitudes, 0.5))  # the mean of the middle two for an even count
    return float(magnitudes.max()) / median if median > 0 else math.inf


def excess_kurtosis(x: torch.Tensor) -> float:
    """``E[(x - mean)^4] / Var^2 - 3`` over all elements: 0 for a Gaussian, large for heavy tails."""
    v = x.double().flatten()
    c = v - v.mean()
    var = float((c * c).mean())
    return float((c**4).mean()) / (var * var) - 3.0 if var > 0 else 0.0


def ranks_for(rows: torch.Tensor, energies: tuple[float, ...] = ENERGIES) -> list[int]:
    """Directions needed to keep each energy share of ``rows [n, d]``."""
    s = torch.linalg.svdvals(rows.double())
    return [rank_for_energy(s, e) for e in energies]


def head_ranks(rows: torch.Tensor, energies: tuple[float, ...] = ENERGIES) -> torch.Tensor:
    """``[H, len(energies)]``: :func:`ranks_for` of every head of ``rows [H, T, d]``."""
    return torch.tensor([ranks_for(r, energies) for r in rows], dtype=torch.float64)


def common_suffix(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The last ``min(Ta, Tb)`` tokens of ``[H, T, d]`` rows: the positions two prefill caches share
    (a sliding-window layer holds only the newest tokens)."""
    n = min(a.shape[1], b.shape[1])
    return a[:, a.shape[1] - n :], b[:, b.shape[1] - n :]


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over heads and shared tokens of ``cos(a[h, t], b[h, t])``; zero rows count as 0."""
    a, b = common_suffix(a.double(), b.double())
    if a.numel() == 0:
        return math.nan
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-300).mean())


def cosine_matrix(layers: list[torch.Tensor]) -> torch.Tensor:
    """``[L, L]`` :func:`mean_cosine` between every two layers (1 on the diagonal)."""
    n = len(layers)
    out = torch.eye(n, dtype=torch.float64)
    for i in range(n):
        for j in range(i + 1, n):
            out[i, j] = out[j, i] = mean_cosine(layers[i], layers[j])
    return out


def mergeable_share(a: torch.Tensor, b: torch.Tensor, t: float) -> float:
    """Share of (head, token) whose rows in two layers are within angular distance ``t`` (MiniCache's test)."""
    a, b = common_suffix(a.double(), b.double())
    if a.numel() == 0:
        return math.nan
    return float((angular_distance(a, b) <= t).double().mean())


def sink_share(attention: torch.Tensor, first: int) -> torch.Tensor:
    """Per query head: share of all attention (summed over queries) received by tokens ``< first``."""
    a = attention.double()
    total = a.sum(dim=1).clamp_min(1e-300)
    return a[:, :first].sum(dim=1) / total


def uniform_sink_share(tokens: int, first: int, window: int | None = None) -> float:
    """What :func:`sink_share` would be if every causal query spread its attention evenly.

    Query ``q`` sees ``min(q + 1, W)`` tokens; the first ``first`` of them are sinks only
    while they are still in its window.
    """
    total = 0.0
    for q in range(tokens):
        lo = 0 if window is None else max(0, q - window + 1)
        seen = q + 1 - lo
        total += max(0, min(first, q + 1) - lo) / seen
    return total / tokens if tokens else 0.0
