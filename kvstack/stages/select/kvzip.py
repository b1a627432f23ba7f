"""KVzip (Kim et al. 2025, "Query-Agnostic KV Cache Compression with Context Reconstruction"):
a token matters if the model needs it to *reproduce* the context. After the prefill the
driver runs a second pass that feeds the context again right after itself, in chunks
(:func:`kvstack.hf.captures.reconstruction.reconstruction_scores`); each cached token scores the largest
attention any reconstruction query of its KV head's group gives it (softmax over the
context and the chunk so far). Unlike window or question scores this sees every token being
*read*, which is what copying a needle digit by digit needs.

Costs one extra pass over the context (``cache.stats["kvzip_seconds"]``): on a CPU SDPA model through the
model's own flash kernel, every row scored from its log-sum-exps (~3x the prefill on SmolLM2 at 2k,
``benchmarks/kvzip_pass.py``); elsewhere a softmax over every query in PyTorch. On SmolLM2's RULER needles it
kept far fewer answers than windowed ``surprisal`` at the same budget (benchmarks/RESULTS.md, sixth session).
Differences from the paper: no "Repeat the previous context" instruction before each chunk
(a stage has no tokenizer; the chunk follows the context directly, which base models copy by
induction anyway), and each chunk starts right after the context (positions ``T..``), as the
paper's chunked scoring does.
"""

from __future__ import annotations

import torch

from kvstack.errors import ModelError
from kvstack.grammar.needs import KVZIP_SECONDS, NEED_KVZIP
from kvstack.kv import KVCache
from kvstack.registry import StageContext, register
from kvstack.stages.select.base import ScoredSelect
from kvstack.stages.select.scores import LayerRows


@register
class KVzip(ScoredSelect, grammar="kvzip"):
    """KVzip; parameters and checks: :mod:`kvstack.grammar.select`."""

    needs = frozenset({NEED_KVZIP})

    def score(self, index: int, rows: LayerRows, ctx: StageContext, context_length: int) -> torch.Tensor:
        per_pos = ctx.captures.get(NEED_KVZIP, {}).get(index)
        if per_pos is None:
            raise ModelError(
                "kvzip needs the reconstruction pass that kvstack.compress runs when a recipe asks for it; "
                "build the cache with kvstack.compress (or compress_many), not by hand"
            )
        out = per_pos.float().gather(1, rows.pos.clamp(0, per_pos.shape[1] - 1))
        return out.masked_fill(~rows.valid, 0.0)

    def apply(self, cache: KVCache, ctx: StageContext, layers: set[int]) -> KVCache:
        out = super().apply(cache, ctx, layers)
        out.stats = {**out.stats, KVZIP_SECONDS: ctx.captures.get(KVZIP_SECONDS)}
        return out
