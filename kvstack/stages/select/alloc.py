"""Budget allocation for selection stages: how many rows each (layer, head) keeps, and which.

* ``uniform``: every head keeps ``round(fraction * n_h)`` of its ``n_h`` rows (at least 1).
* ``pyramid`` (PyramidKV, Cai et al. 2024): the same total, spread so budgets fall
  linearly with depth. Like PyramidKV, the rows a method must keep (sinks, SnapKV's
  window, H2O's recent tokens) are kept in every layer and only the rest - the *free*
  budget - follows the pyramid: over the ``L`` layers the stage acts on, layer ``l``
  (0 = shallowest) gets weight ``w_l = (2 - 1/beta) - l * (2 - 2/beta) / (L - 1)``, so the
  deepest layer gets ``1/beta`` of the mean free budget and the shallowest ``2 - 1/beta``
  times it (PyramidKV's ``min_num = budget/beta``, ``max_num = 2*budget - min_num``;
  beta=20 as in the paper, beta=1 is uniform). A layer that cannot hold its share (it
  would keep more rows than it has) keeps everything and the rest moves to the others, so
  the total is exactly the uniform total. Within a layer heads share evenly.
* ``adakv`` (Ada-KV, Feng et al. 2024): one top-k per layer over all heads' scores, each
  head's scores normalized to a distribution over its free rows, so heads with spread-out
  attention keep more. The total is the uniform total of the layer exactly. Safeguard
  (Ada-KV's ``alpha=0.2``): each head first keeps its forced rows and its own best
  ``floor(0.2 * B / H)`` free rows (``B`` the layer's free budget, ``H`` heads), and at
  least one row if it has no forced row.

Ties in every top-k go to the earlier row (the lower index in the head).
"""

from __future__ import annotations

import math

import torch

from kvstack.stages.select.scores import normalize, rank

ADAKV_FLOOR = 0.2


def head_request(rows: int, fraction: float) -> int:
    """Rows a head of ``rows`` keeps under ``fraction``: round half up, at least 1."""
    return max(1, math.floor(fraction * rows + 0.5)) if rows else 0


def distribute(total: int, weights: list[float], caps: list[int], floors: list[int]) -> list[int]:
    """Split ``total`` integers proportionally to ``weights``, each within ``[floors[i], caps[i]]``.

    Water-filling: ``x_i = clamp(lam * w_i, floor_i, cap_i)`` with ``lam`` found by bisection
    so the ``x_i`` sum to ``total``, then rounded by largest remainder (ties to the lower
    index). Needs ``sum(floors) <= total <= sum(caps)``.
    """
    n = len(weights)
    if not sum(floors) <= total <= sum(caps):
        raise ValueError(f"cannot split {total} between floors {floors} and caps {caps}")
    w = [max(float(x), 1e-12) for x in weights]

    def fill(lam: float) -> list[float]:
        return [min(max(lam * w[i], floors[i]), caps[i]) for i in range(n)]

    lo, hi = 0.0, 1.0
    while sum(fill(hi)) < total:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if sum(fill(mid)) < total else (lo, mid)
    x = fill(hi)
    out = [max(floors[i], min(caps[i], math.floor(x[i] + 1e-9))) for i in range(n)]
    frac = sorted(range(n), key=lambda i: (-(x[i] - out[i]), i))
    while sum(out) < total:
        for i in frac:
            if sum(out) < total and out[i] < caps[i]:
                out[i] += 1
    while sum(out) > total:
        for i in reversed(frac):
            if sum(out) > total and out[i] > floors[i]:
                out[i] -= 1
    return out


def pyramid_weights(num_layers: int, beta: float) -> list[float]:
    """PyramidKV's linear profile over depth, mean 1: ``2 - 1/beta`` at the top down to ``1/beta``."""
    if num_layers == 1:
        return [1.0]
    top, bottom = 2.0 - 1.0 / beta, 1.0 / beta
    return [top - (top - bottom) * i / (num_layers - 1) for i in range(num_layers)]


def pyramid_budgets(
    counts: list[list[int]], requests: list[list[int]], forced: list[list[int]], beta: float
) -> list[list[int]]:
    """Per-layer (in depth order), per-head budgets with the uniform total (see the module doc)."""
    free_req = [
        sum(r - f for r, f in zip(rq, fo, strict=True)) for rq, fo in zip(requests, forced, strict=True)
    ]
    head_caps = [[n - f for n, f in zip(ns, fo, strict=True)] for ns, fo in zip(counts, forced, strict=True)]
    head_floors = [
        [1 if f == 0 and n > 0 else 0 for n, f in zip(ns, fo, strict=True)]
        for ns, fo in zip(counts, forced, strict=True)
    ]
    weights = [w * r for w, r in zip(pyramid_weights(len(counts), beta), free_req, strict=True)]
    layer_free = distribute(
        sum(free_req), weights, [sum(c) for c in head_caps], [sum(f) for f in head_floors]
    )
    out = []
    for total, rq, fo, caps, floors in zip(layer_free, requests, forced, head_caps, head_floors, strict=True):
        shares = distribute(total, [r - f for r, f in zip(rq, fo, strict=True)], caps, floors)
        out.append([f + s for f, s in zip(fo, shares, strict=True)])
    return out


def topk_keep(
    scores: torch.Tensor, free: torch.Tensor, forced: torch.Tensor, budgets: list[int]
) -> list[torch.Tensor]:
    """Per head: its forced rows plus its best free rows up to ``budgets[h]``, as sorted row indices."""
    keep = []
    for h, budget in enumerate(budgets):
        must = torch.nonzero(forced[h]).flatten()
        cand = torch.nonzero(free[h]).flatten()
        chosen = cand[rank(scores[h, cand])[: max(budget - must.numel(), 0)]]
        keep.append(torch.sort(torch.cat([must, chosen])).values)
    return keep


def adakv_keep(
    scores: torch.Tensor, free: torch.Tensor, forced: torch.Tensor, requests: list[int], log_scores: bool
) -> list[torch.Tensor]:
    """Ada-KV: one top-k over the layer's normalized scores, with a per-head floor (module doc)."""
    heads = scores.shape[0]
    forced_n = [int(x) for x in forced.sum(dim=1).tolist()]
    free_n = [int(x) for x in free.sum(dim=1).tolist()]
    budget = sum(requests) - sum(forced_n)
    norm = normalize(scores, free, log_scores)
    base = int(ADAKV_FLOOR * budget / heads)
    floors = [min(free_n[h], max(base, 1 if forced_n[h] == 0 else 0)) for h in range(heads)]
    chosen = torch.zeros_like(free)
    for h in range(heads):
        cand = torch.nonzero(free[h]).flatten()
        chosen[h, cand[rank(norm[h, cand])[: floors[h]]]] = True
    rest = budget - sum(floors)
    if rest > 0:
        flat = norm.masked_fill(chosen | ~free, float("-inf")).flatten()
        chosen.view(-1)[rank(flat)[:rest]] = True
    return [torch.nonzero(row).flatten() for row in forced | chosen]
