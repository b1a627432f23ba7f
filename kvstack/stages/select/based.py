"""Selection stages built on another method's scores (``base=``): CriticalKV and token merging.

Such a stage runs a *base* method (any score-and-keep stage, e.g. ``expected`` or ``snapkv``,
with its default options) for its scores and forced rows, and keeps the budget, ``sink`` and
``alloc`` options of its own. The base's captures (window queries, question queries) are
requested on its behalf, so ``critical:0.25,base=q2c`` needs a question like ``q2c`` does.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from kvstack.registry import REGISTRY, StageContext
from kvstack.stages.select.base import ScoredSelect
from kvstack.stages.select.scores import LayerRows, normalize


class BasedSelect(ScoredSelect):
    """A score-and-keep stage that delegates scoring to a ``base`` method (see the module doc)."""

    base: str
    own_needs: ClassVar[frozenset[str]] = frozenset()

    def check_params(self) -> None:
        # the grammar checked that base names a score-and-keep method (kvstack.grammar.select.SCORED)
        self.method = REGISTRY[self.base](fraction=self.fraction, sink=self.sink, alloc=self.alloc, beta=self.beta)
        # instance attributes the driver reads: captures to collect, window queries, question
        self.needs = self.method.needs | self.own_needs
        self.needs_question = self.method.needs_question
        self.window = getattr(self.method, "window", 0)

    def must_keep(self, rows: LayerRows, requests: list[int], context_length: int) -> torch.Tensor | None:
        return self.method.must_keep(rows, requests, context_length)

    def must_keep_text(self) -> str:
        return self.method.must_keep_text()

    def base_distribution(self, index: int, rows: LayerRows, ctx: StageContext, context_length: int) -> torch.Tensor:
        """The base's scores as a distribution over each head's rows ``[H, Lmax]`` (0 on padding):
        attention masses divided by their head's sum, log or signed scores through a softmax."""
        scores = self.method.score(index, rows, ctx, context_length).float().cpu()
        return normalize(scores, rows.valid, self.method.log_scores).masked_fill(~rows.valid, 0.0)
