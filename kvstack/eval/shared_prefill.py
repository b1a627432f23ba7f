"""Compress one context with several recipes from a single prefill.

``kvstack.compress`` prefills per call; an evaluation grid runs many recipes on the same
sample, and prefill dominates their cost. Here the prefill captures the union of what the
recipes need, then each recipe is applied to the same dense cache. A test checks every
cache equals what ``kvstack.compress`` builds for that recipe alone. (Proposed public API:
``kvstack.compress_many(model, context_ids, recipes, question_ids=None)``.)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace

import torch

from kvstack.errors import InputError, KvstackError
from kvstack.kv import KVCache
from kvstack.stack import Recipe


def compress_many(
    model,
    context_ids: torch.Tensor,
    recipes: list[Recipe],
    question_ids: torch.Tensor | None = None,
    *,
    chunk_size: int = 1024,
    keep: tuple[type[Exception], ...] = (KvstackError,),
) -> Iterator[tuple[Recipe, KVCache | Exception]]:
    """Yield ``(recipe, cache)`` for each recipe, one at a time (so only one compressed cache is
    alive at once); a recipe that cannot run on this context yields its typed error instead.

    ``keep`` names the exceptions of one recipe that are yielded in place of its cache rather than
    raised, so the recipes after it still run on the shared prefill (a sweep on a cluster records
    any failure of one cell and goes on; the default keeps only kvstack's typed errors)."""
    from kvstack.api import stage_context, window_queries_needed
    from kvstack.api_inputs import as_ids as _as_ids
    from kvstack.hf.model import model_info
    from kvstack.hf.prefill import prefill

    info = model_info(model)
    ctx_ids = _as_ids(context_ids, "context_ids")
    q_ids = None if question_ids is None or torch.as_tensor(question_ids).numel() == 0 else _as_ids(
        question_ids, "question_ids"
    )
    runnable = [r for r in recipes if q_ids is not None or not r.needs_question]
    needs = frozenset().union(*(r.needs for r in runnable)) if runnable else frozenset()
    window = window_queries_needed(runnable)
    pre = prefill(model, info, ctx_ids, needs, q_ids, window_queries=window, chunk_size=chunk_size)
    for recipe in recipes:
        if recipe.needs_question and q_ids is None:
            yield recipe, InputError(
                f"recipe '{recipe.text}' is query-aware and this sample has no question (perplexity task)"
            )
            continue
        ctx = stage_context(info, pre.captures, recipe, q_ids)
        start = time.perf_counter()
        try:
            cache = recipe.apply(replace(pre.cache, stats={}), ctx)
        except keep as exc:  # e.g. a budget larger than this context
            yield recipe, exc
            continue
        cache.stats.update(prefill_seconds=pre.seconds, compress_seconds=time.perf_counter() - start,
                           shared_prefill=len(recipes))
        yield recipe, cache
