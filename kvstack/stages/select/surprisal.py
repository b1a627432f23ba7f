"""Surprisal selection: keep the tokens the model could not predict (question-agnostic).

Selective Context (Li et al. 2023) and LLMLingua drop the prompt tokens a language model finds
predictable; this applies the same self-information, ``-log p(x_t | x_<t)``, to the KV cache:
every head and layer keeps the same most surprising positions. Why it holds where
attention-based question-agnostic scores fail on real models: a needle ("One of the special
magic numbers for ... is: 7 digits.") is improbable inside an essay or a repeated noise
haystack, while nothing in the context's own attention singles it out before the question
arrives. Pair it with ``span=N`` so the value that follows the surprising words is kept too.
Position 0 has no prediction and always ranks first (an attention sink).

Options (issue 17):

* ``window=0`` (default): surprisal from the prefill's own logits, no extra pass.
* ``window=W``: each token predicted from only the ``W`` (to ``2W-1``) tokens before it, by an
  extra pass over short overlapping sequences (:mod:`kvstack.hf.captures.local_nll`). Why: under
  the whole context, induction makes repeated templates predictable - RULER's second to fourth
  multi-key needles copy the first one's wording, so only their key words stay surprising. With
  the first needle out of sight, each needle is as surprising as the first.
* ``agg=max`` (default): a row's span score is the best token score of the span ending at it.
  ``agg=mean``: the best *mean* over the spans covering it, so a run of surprising tokens (a
  needle sentence) outranks the lone rare words an essay is full of. ``clip=C`` caps each
  token's surprisal at ``C`` nats first, so one very rare word cannot carry a mean.
* ``union=1``: a token ranks by the better of its rank under this score and under the same
  surprisal with ``agg=max`` and no clip; each kind of needle is caught by one of the two.

On SmolLM2-135M (RULER 4k, tuning seeds, benchmarks/surprisal_ranks.py), the share of the
context a needle's answer needs: up to 87% for the default, up to 26% for
``window=128,agg=mean,clip=6,union=1`` (benchmarks/RESULTS.md). The default is unchanged.
"""

from __future__ import annotations

import torch

from kvstack.errors import ModelError
from kvstack.grammar.needs import NEED_TOKEN_NLL, local_nll_need
from kvstack.registry import StageContext, register
from kvstack.stages.select.base import ScoredSelect, spread_forward
from kvstack.stages.select.scores import LayerRows

_TOP = 1e9  # stands for position 0's +inf (no prediction): first, yet finite, so means stay finite


def span_mean(scores: torch.Tensor, span: int) -> torch.Tensor:
    """``out[j] = mean(scores[j - span : j + 1])`` (fewer at the start): a span's average surprisal."""
    if span <= 0:
        return scores
    ones = torch.ones_like(scores)
    sums = torch.nn.functional.pad(scores.cumsum(0), (1, 0))
    counts = torch.nn.functional.pad(ones.cumsum(0), (1, 0))
    lo = (torch.arange(scores.numel()) - span).clamp(min=0)
    hi = torch.arange(1, scores.numel() + 1)
    return (sums[hi] - sums[lo]) / (counts[hi] - counts[lo])


def _ranks(scores: torch.Tensor) -> torch.Tensor:
    """How many positions score strictly better (0 = best; ties share a rank), as floats to negate into scores."""
    ascending = scores.sort().values
    return (scores.numel() - torch.searchsorted(ascending, scores, right=True)).to(scores.dtype)


@register
class Surprisal(ScoredSelect, grammar="surprisal"):
    needs = frozenset({NEED_TOKEN_NLL})
    window: int
    agg: str
    clip: float
    union: bool
    back: int

    def check_params(self) -> None:
        self.needs = frozenset({local_nll_need(self.window) if self.window else NEED_TOKEN_NLL})
        # the union ranks two spread scores itself; `back` spreads over positions both ways here
        self.spreads_itself = self.union or self.back > 0

    def _spread(self, scores: torch.Tensor) -> torch.Tensor:
        """``[T]`` each position's best score within ``span`` before it and ``back`` after it: the position is
        kept with a well-scored token up to ``span`` tokens behind it or ``back`` tokens ahead of it."""
        out = spread_forward(scores.view(1, -1), self.span)[0]
        if self.back > 0:
            out = spread_forward(out.flip(0).view(1, -1), self.back)[0].flip(0)
        return out

    def _token_scores(self, ctx: StageContext) -> torch.Tensor:
        """``[T]`` the score of each context position (spread over ``span`` here only for a union)."""
        need = next(iter(self.needs))
        nll = ctx.captures.get(need)
        if nll is None:
            raise ModelError(
                f"{self.spec()} needs each context token's log-likelihood ({need}), which kvstack.compress "
                "captures during the prefill when a recipe asks for it; build the cache with kvstack.compress "
                "(or compress_many)"
            )
        plain = nll.double().nan_to_num(posinf=_TOP).clamp(max=_TOP)
        own = plain
        if self.clip > 0:
            own = torch.cat([own[:1], own[1:].clamp(max=self.clip)])  # position 0 stays first
        if self.agg == "mean":
            own = span_mean(own, self.span)
        if not self.union:
            return self._spread(own) if self.back > 0 else own
        mine = self._spread(own)
        best = self._spread(plain)  # agg=max, no clip: lone surprising words
        return -torch.minimum(_ranks(mine), _ranks(best))

    def score(self, index: int, rows: LayerRows, ctx: StageContext, context_length: int) -> torch.Tensor:
        scores = self._token_scores(ctx)
        pos = rows.pos.clamp(0, scores.shape[0] - 1).cpu()
        return scores.float()[pos].masked_fill(~rows.valid.cpu(), float("-inf"))
