"""The base of score-and-keep selection stages: budgets, forced rows, allocation, eviction.

A method subclasses :class:`ScoredSelect` and implements :meth:`ScoredSelect.score` (one
score per KV head and row, higher = keep) and, if it always keeps some rows (SnapKV's
window, H2O's recent tokens), :meth:`ScoredSelect.must_keep`. The base class does the rest:

* budget: each head keeps ``round(fraction * n_h)`` of its ``n_h`` rows (at least 1). For a
  sliding-window layer ``n_h`` is what the layer holds (the last ``W-1`` tokens);
* ``sink=N``: positions ``< N`` are always kept, counted inside the budget; forced rows
  that do not fit the budget raise :class:`BudgetError` saying what to change;
* ``span=N``: a row also gets the best score of the ``N`` rows before it, so the tokens that
  follow a selected token are kept with it. Why: a multi-token answer (a 7-digit number is 7
  tokens here) is found by the question through its first tokens, and the rest is copied during
  decoding by attending to each token's successor - which prompt-time scores never rate;
* ``alloc=uniform|pyramid|adakv``: how the budget is spread (see
  :mod:`kvstack.stages.select.alloc`);
* eviction through :meth:`KVLayer.select_rows`, so per-head budgets really free memory.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from kvstack.errors import BudgetError
from kvstack.kv import KVCache, KVLayer
from kvstack.registry import Stage, StageContext
from kvstack.stages.select.alloc import adakv_keep, head_request, pyramid_budgets, topk_keep
from kvstack.stages.select.scores import LayerRows


def spread_forward(scores: torch.Tensor, span: int) -> torch.Tensor:
    """``out[h, j] = max(scores[h, j - span : j + 1])`` over each head's rows (in position order)."""
    if span <= 0 or scores.shape[-1] == 0:
        return scores
    padded = torch.nn.functional.pad(scores.unsqueeze(1), (span, 0), value=float("-inf"))
    return torch.nn.functional.max_pool1d(padded, kernel_size=span + 1, stride=1).squeeze(1)


class ScoredSelect(Stage):
    """Keep the best-scored rows of each head; see the module doc for the common options."""

    family = "select"
    log_scores: ClassVar[bool] = False  # scores are logs of a mass (Ada-KV normalizes with a softmax)
    spreads_itself: bool = False  # score() already applied span (it mixes several spread scores)
    fraction: float
    sink: int
    alloc: str
    beta: float
    span: int

    # --- what a method implements -----------------------------------------------------
    def score(self, index: int, rows: LayerRows, ctx: StageContext, context_length: int) -> torch.Tensor:
        """Scores ``[H_kv, Lmax]`` (padded layout; higher = keep)."""
        raise NotImplementedError

    def must_keep(self, rows: LayerRows, requests: list[int], context_length: int) -> torch.Tensor | None:
        """Rows ``[H_kv, Lmax]`` the method always keeps besides the sinks (inside the budget)."""
        return None

    def must_keep_text(self) -> str:
        """How the forced rows are set, for BudgetError messages."""
        return f"sink={self.sink}"

    def check_params(self) -> None:
        """What the method sets up beyond the grammar's checks (``kvstack.grammar.select``)."""

    # --- Stage hooks ------------------------------------------------------------------
    def validate(self) -> None:
        # the grammar checked fraction, sink, alloc, beta, span and the method's own options
        self.check_params()

    def apply(self, cache: KVCache, ctx: StageContext, layers: set[int]) -> KVCache:
        order = sorted(layers)
        if not order:
            return cache
        total = cache.context_length
        plans = {}
        for i in order:
            rows = LayerRows(cache.layers[i])
            requests = [head_request(n, self.fraction) for n in rows.counts]
            forced = rows.valid & (rows.pos < self.sink)
            extra = self.must_keep(rows, requests, total)
            if extra is not None:
                forced |= extra & rows.valid
            self._check_forced(i, rows, requests, forced)
            plans[i] = (rows, requests, forced)
        budgets = {i: plans[i][1] for i in order}
        if self.alloc == "pyramid":
            counts = [plans[i][0].counts for i in order]
            forced_n = [[int(x) for x in plans[i][2].sum(dim=1).tolist()] for i in order]
            for i, b in zip(
                order, pyramid_budgets(counts, [plans[i][1] for i in order], forced_n, self.beta), strict=True
            ):
                budgets[i] = b

        def run(index: int, layer: KVLayer) -> KVLayer:
            rows, requests, forced = plans.pop(index)  # drop each layer's decoded rows once done
            scores = self.score(index, rows, ctx, total).float().cpu()
            if not self.spreads_itself:
                scores = spread_forward(scores, self.span)
            free = rows.valid & ~forced
            if self.alloc == "adakv":
                keep = adakv_keep(scores, free, forced, requests, self.log_scores)
            else:
                keep = topk_keep(scores, free, forced, budgets[index])
            return layer.select_rows(keep)

        return cache.map_layers(run, set(order))

    def _check_forced(self, index: int, rows: LayerRows, requests: list[int], forced: torch.Tensor) -> None:
        for h, (n, want, must) in enumerate(
            zip(rows.counts, requests, forced.sum(dim=1).tolist(), strict=True)
        ):
            if must > want:
                need = math.ceil(100 * must / n) / 100
                raise BudgetError(
                    f"{self.spec()}: head {h} of layer {index} keeps {want} of its {n} tokens, but "
                    f"{self.must_keep_text()} must always be kept ({int(must)} tokens there). Raise the "
                    f"fraction to at least {need:g}, or keep fewer forced tokens (a smaller sink/window)."
                )
