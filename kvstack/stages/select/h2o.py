"""H2O (Zhang et al. 2023): heavy hitters by cumulative attention, plus the most recent tokens.

The prefill driver sums the attention each key received from the prompt's queries
(:mod:`kvstack.hf.attention_scored`). ``stride=1`` sums every query exactly, in the same pass
as the model's attention (which kvstack then computes itself: on the CPU about as slow as a
second pass). ``stride=k`` keeps the model's own attention and estimates: the attention from
the 64 queries right after each key exactly, from farther queries every k-th one (weighted by
k) plus the last 64. Sampling without that exact band loses the local attention most heads
pay (RESULTS.md: 82% of the kept set at k=16 instead of 98%). The default was chosen by
measuring cost and kept-set agreement (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import math

import torch

from kvstack.grammar.needs import attention_need, attention_strides  # noqa: F401  (re-exported)
from kvstack.registry import StageContext, register
from kvstack.stages.select.base import ScoredSelect
from kvstack.stages.select.scores import LayerRows, at_positions, group_reduce, newest_rows


@register
class H2O(ScoredSelect, grammar="h2o"):
    """H2O: the attention each token received from the context queries (summed, and summed over
    the group), plus the most recent tokens; ``stride`` samples the queries (see the module doc)."""

    stride: int

    def check_params(self) -> None:
        self.needs = frozenset({attention_need(self.stride)})  # read by the prefill driver

    def _recent(self, request: int) -> int:
        return int(self.recent) if self.recent >= 1 else math.floor(self.recent * request + 0.5)

    def must_keep(self, rows: LayerRows, requests: list[int], context_length: int) -> torch.Tensor:
        return newest_rows(rows, [self._recent(r) for r in requests])

    def must_keep_text(self) -> str:
        return f"sink={self.sink} plus recent={self.recent:g} tokens"

    def score(self, index: int, rows: LayerRows, ctx: StageContext, context_length: int) -> torch.Tensor:
        received = ctx.captures[attention_need(self.stride)][index]
        return group_reduce(at_positions(received, rows), rows.num_heads)
