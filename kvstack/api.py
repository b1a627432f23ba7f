"""The public entry points: :func:`compress` a context (or :func:`compress_many` recipes on one prefill),
:func:`generate` from the result."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from kvstack.api_inputs import as_ids, batch_ids, batch_questions, check_model, is_batch
from kvstack.errors import InputError, KvstackError
from kvstack.kv import KVCache
from kvstack.kv_batch import KVBatch
from kvstack.stack import NEED_QUESTION_QUERIES, NEED_WINDOW_QUERIES, Recipe, StageContext

# check_model now lives in kvstack.api_inputs; it stays importable from here
__all__ = ["check_model", "compress", "compress_many", "generate", "stage_context", "window_queries_needed"]


def window_queries_needed(recipes: list[Recipe]) -> int:
    """How many last-context queries the prefill must capture for these recipes' stages."""
    return max(
        (getattr(s, "window", 0) or 0 for r in recipes for s in r.stages if NEED_WINDOW_QUERIES in s.needs),
        default=0,
    )


def stage_context(info, captures: dict, recipe: Recipe, question_ids) -> StageContext:
    """What a recipe's stages see: the model's geometry, the prefill captures, the question if used."""
    return StageContext(
        num_query_heads=info.num_query_heads,
        num_kv_heads=info.num_kv_heads,
        head_dim=info.head_dim,
        num_layers=info.num_layers,
        captures=captures,
        question_ids=question_ids if NEED_QUESTION_QUERIES in recipe.needs else None,
    )


def compress(
    model,
    context_ids,
    recipe: str | Recipe = "identity",
    question_ids=None,
    *,
    chunk_size: int = 1024,
    progress: bool = False,
    fingerprint: str = "config",
) -> KVCache | KVBatch:
    """Prefill ``context_ids`` with ``model`` and compress its KV cache with ``recipe``.

    ``context_ids`` as a list of sequences ``[ids_1, ..., ids_B]`` (with ``question_ids`` None or
    a list of B) returns a :class:`~kvstack.kv_batch.KVBatch`: each sequence compressed as its
    own call would, stored ragged (no padding), ``batch[i]`` its :class:`KVCache`.

    ``question_ids=None`` builds a question-agnostic cache reusable for many questions;
    passing the question lets query-aware stages (Q2C) score tokens by it. The question
    itself is not stored: pass it again to :func:`generate`. ``fingerprint="weights"`` marks
    the cache with a hash of the model's config *and weights* (``kvstack.hf.fingerprint``), so
    a fine-tune with the same config refuses it; the default marks the config only.
    """
    if is_batch(context_ids):
        contexts = batch_ids(context_ids, "context_ids")
        questions = batch_questions(question_ids, len(contexts), optional=True)
        options = dict(chunk_size=chunk_size, progress=progress, fingerprint=fingerprint)
        return KVBatch([_one_of_batch(i, model, c, recipe, q, options)
                        for i, (c, q) in enumerate(zip(contexts, questions, strict=True))])
    run = _Run.of(model, context_ids, [recipe], question_ids, fingerprint)
    (recipe_obj,) = run.recipes
    if recipe_obj.needs_question and run.question_ids is None:
        raise InputError(
            f"recipe '{recipe_obj.text}' is query-aware and needs question_ids; pass the question, or "
            "use a question-agnostic stage (snapkv, streaming)"
        )
    pre = run.prefill(model, run.recipes, chunk_size, progress)
    return run.apply(recipe_obj, pre.cache, pre)


def _one_of_batch(index: int, model, context_ids, recipe, question_ids, options: dict) -> KVCache:
    """Sequence ``index`` of a batch compressed as its own call; its errors name it (same type)."""
    try:
        return compress(model, context_ids, recipe, question_ids, **options)
    except KvstackError as exc:
        raise type(exc)(f"context_ids[{index}] of the batch: {exc}") from exc


def compress_many(
    model,
    context_ids,
    recipes: Sequence[str | Recipe],
    question_ids=None,
    *,
    chunk_size: int = 1024,
    progress: bool = False,
    fingerprint: str = "config",
    keep: tuple[type[Exception], ...] = (KvstackError,),
) -> Iterator[tuple[Recipe, KVCache | Exception]]:
    """Compress one context with several recipes from a single prefill: ``(recipe, cache)`` per recipe.

    Why: an evaluation grid runs many recipes on the same context, and the prefill dominates their
    cost. The prefill captures the union of what the recipes need; then each recipe's stages run on
    the same dense cache, exactly as :func:`compress` runs them (same steps, same tensors).

    Everything that can be checked without the model running is checked when this is called - every
    recipe parsed (``RecipeError``), the ids, the context window - so a bad recipe fails before any
    prefill. The caches then come one at a time as the returned iterator is consumed (only one
    compressed cache is alive at once). A recipe that cannot run on this context yields its error in
    place of its cache: a query-aware recipe without a question (``question_ids`` None or empty), or an
    exception of a type in ``keep`` (default: kvstack's typed errors, e.g. a budget larger than the
    context), so the recipes after it still run on the shared prefill.
    """
    if isinstance(recipes, (str, Recipe)):
        raise InputError("recipes must be a list of recipes (strings or kvstack.Recipe); for one, use kvstack.compress")
    empty = question_ids.numel() == 0 if isinstance(question_ids, torch.Tensor) else question_ids in ([], ())
    if empty:
        question_ids = None  # an empty question (a perplexity task) is no question
    run = _Run.of(model, context_ids, list(recipes), question_ids, fingerprint)
    return _each_recipe(model, run, chunk_size, progress, keep)


def _each_recipe(model, run: _Run, chunk_size: int, progress: bool, keep: tuple[type[Exception], ...]):
    """The lazy half of :func:`compress_many`: one prefill, then each recipe's stages on its dense cache."""
    runnable = [r for r in run.recipes if run.question_ids is not None or not r.needs_question]
    pre = run.prefill(model, runnable, chunk_size, progress) if runnable else None
    for recipe in run.recipes:
        if recipe.needs_question and run.question_ids is None:
            yield recipe, InputError(
                f"recipe '{recipe.text}' is query-aware and this sample has no question (perplexity task)"
            )
            continue
        try:
            cache = run.apply(recipe, replace(pre.cache, stats={}), pre)
        except keep as exc:  # e.g. a budget larger than this context
            yield recipe, exc
            continue
        cache.stats.update(shared_prefill=len(run.recipes))
        yield recipe, cache


@dataclass(frozen=True)
class _Run:
    """The steps :func:`compress` and :func:`compress_many` share, on checked inputs."""

    info: Any
    fingerprint: str
    recipes: list[Recipe]
    context_ids: torch.Tensor
    question_ids: torch.Tensor | None

    @classmethod
    def of(cls, model, context_ids, recipes: list, question_ids, fingerprint: str) -> _Run:
        """Check the model, parse the recipes, check the ids and the context window: no model work yet."""
        from kvstack.hf.fingerprint import model_fingerprint
        from kvstack.hf.model import check_context_window, model_info

        info = model_info(model)
        marked = model_fingerprint(model, fingerprint)
        parsed = [r if isinstance(r, Recipe) else Recipe.parse(r) for r in recipes]
        ctx_ids = as_ids(context_ids, "context_ids")
        q_ids = None if question_ids is None else as_ids(question_ids, "question_ids")
        n_q = 0 if q_ids is None else q_ids.numel()
        check_context_window(
            model, ctx_ids.numel() + n_q, f"a context of {ctx_ids.numel()} tokens (+ {n_q} of question)"
        )
        return cls(info, marked, parsed, ctx_ids, q_ids)

    def prefill(self, model, recipes: list[Recipe], chunk_size: int, progress: bool):
        """One prefill that captures what every one of ``recipes`` needs."""
        from kvstack.hf.prefill import prefill

        needs = frozenset().union(*(r.needs for r in recipes))
        window = window_queries_needed(recipes)
        return prefill(model, self.info, self.context_ids, needs, self.question_ids, window_queries=window,
                       chunk_size=chunk_size, progress=progress)

    def apply(self, recipe: Recipe, dense: KVCache, pre) -> KVCache:
        """``recipe``'s stages on the prefill's ``dense`` cache, timed, marked with the model's fingerprint."""
        ctx = stage_context(self.info, pre.captures, recipe, self.question_ids)
        start = time.perf_counter()
        cache = recipe.apply(dense, ctx)
        cache.stats.update(prefill_seconds=pre.seconds, compress_seconds=time.perf_counter() - start)
        cache.model_fingerprint = self.fingerprint
        return cache


@torch.no_grad()
def generate(model, cache: KVCache | KVBatch, question_ids, max_new_tokens: int = 32, *, fingerprint: str = "config",
             graphs: bool | None = None, **generate_kwargs) -> torch.Tensor | list[torch.Tensor]:
    """Answer ``question_ids`` from a compressed ``cache`` with ``model.generate``; greedy by default.

    Returns only the new token ids (1-D). ``cache`` is not modified, so it can be reused.
    ``fingerprint="weights"`` refuses a cache that does not carry a weights fingerprint (a cache
    that does is always checked against the weights). Extra keyword arguments go to
    ``model.generate`` (e.g. ``do_sample=True``).

    With a :class:`~kvstack.kv_batch.KVBatch` and a list of B questions, the B sequences run in
    one batched ``model.generate`` and a list of B tensors comes back, row ``i`` equal to the
    one-sequence call on ``cache[i]`` (greedy).

    ``graphs=True`` decodes greedily in kvstack's own step loop instead of ``model.generate``
    (:mod:`kvstack.hf.step_loop`): on CUDA, decode steps through the kernels are captured in a CUDA
    graph per shape bucket and replayed, which takes the per-step Python and launch overhead away.
    The same tokens come back; sampling and other ``generate`` options are refused (InputError).
    The default (``None``) takes the step loop on a CUDA model when decoding is greedy with no other
    option, and ``model.generate`` otherwise (always on a CPU); ``graphs=False`` forces ``model.generate``.
    """
    from kvstack.hf.attention import enable
    from kvstack.hf.cache import CompressedCache
    from kvstack.hf.compat import cache_kwargs
    from kvstack.hf.generation import generation_kwargs
    from kvstack.hf.model import check_context_window, model_info
    from kvstack.hf.step_loop import use_graphs

    graphs = use_graphs(graphs, next(model.parameters()).device, generate_kwargs)
    if isinstance(cache, KVBatch):
        from kvstack.api_batch import generate_batch

        return generate_batch(model, cache, question_ids, max_new_tokens, fingerprint, generate_kwargs, graphs)
    if not isinstance(cache, KVCache):
        raise InputError(
            f"cache must be a kvstack.KVCache (or KVBatch) from kvstack.compress, not {type(cache).__name__}"
        )
    check_model(model, cache, fingerprint)
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens={max_new_tokens}: ask for at least 1 token")
    if is_batch(question_ids):
        raise InputError(
            f"question_ids is a list of {len(question_ids)} questions but this cache holds one sequence; "
            "pass one question (a list of ints or a 1-D tensor), or compress a list of contexts for a batch"
        )
    q_ids = as_ids(question_ids, "question_ids")
    total = cache.context_length + q_ids.numel() + max_new_tokens
    check_context_window(model, total, f"{cache.context_length} context + {q_ids.numel()} question + "
                         f"{max_new_tokens} new tokens")
    info = model_info(model)
    device = next(model.parameters()).device
    input_ids = torch.cat([cache.context_ids.long().cpu(), q_ids.cpu()]).view(1, -1).to(device)
    hf_cache = CompressedCache(cache, info.dtype)
    kwargs, pad = generation_kwargs(model, generate_kwargs)
    if graphs:
        from kvstack.hf.generation import cut_after_eos, eos_ids
        from kvstack.hf.step_loop import greedy_loop

        ids = q_ids.view(1, -1).to(device)
        positions = torch.arange(cache.context_length, cache.context_length + ids.shape[1], device=device).view(1, -1)
        eos = eos_ids(model, kwargs)
        with enable(model):
            out = greedy_loop(model, hf_cache, ids, positions, max_new_tokens, eos,
                              min_new_tokens=kwargs.get("min_new_tokens") or 0)
        return cut_after_eos(out[0].cpu(), eos)
    with enable(model):
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            **cache_kwargs(hf_cache),
            max_new_tokens=max_new_tokens,
            pad_token_id=pad,
            **kwargs,
        )
    return out[0, input_ids.shape[1] :].cpu()
