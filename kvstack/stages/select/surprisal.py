"""Surprisal selection: keep the tokens the model could not predict (question-agnostic, no extra pass).

Selective Context (Li et al. 2023) and LLMLingua drop the prompt tokens a language model finds
predictable; this applies the same self-information, ``-log p(x_t | x_<t)`` from the prefill's
own logits, to the KV cache: every head and layer keeps the same most surprising positions.
Why it holds where attention-based question-agnostic scores fail on real models: a needle
("One of the special magic numbers for ... is: 7 digits.") is improbable inside an essay or
a repeated noise haystack, so its first words rank in the top 1% of a 4k RULER context on
SmolLM2-135M, while nothing in the context's own attention singles it out before the question
arrives. Pair it with ``span=N`` so the value that follows the surprising words is kept too.
Position 0 has no prediction and always ranks first (an attention sink).
"""

from __future__ import annotations

import torch

from kvstack.errors import ModelError
from kvstack.grammar.needs import NEED_TOKEN_NLL
from kvstack.registry import StageContext, register
from kvstack.stages.select.base import ScoredSelect
from kvstack.stages.select.scores import LayerRows


@register
class Surprisal(ScoredSelect, grammar="surprisal"):
    needs = frozenset({NEED_TOKEN_NLL})

    def score(self, index: int, rows: LayerRows, ctx: StageContext, context_length: int) -> torch.Tensor:
        nll = ctx.captures.get(NEED_TOKEN_NLL)
        if nll is None:
            raise ModelError(
                "surprisal needs each context token's log-likelihood, which kvstack.compress captures during the "
                "prefill when a recipe asks for it; build the cache with kvstack.compress (or compress_many)"
            )
        pos = rows.pos.clamp(0, nll.shape[0] - 1).cpu()
        scores = nll.float()[pos].nan_to_num(posinf=1e9)
        return scores.masked_fill(~rows.valid.cpu(), float("-inf"))
