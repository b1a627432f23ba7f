"""The public entry points: :func:`compress` a context, :func:`generate` from the result."""

from __future__ import annotations

import time

import torch

from kvstack.errors import InputError, ModelError
from kvstack.kv import KVCache
from kvstack.stack import NEED_QUESTION_QUERIES, NEED_WINDOW_QUERIES, Recipe, StageContext

TOKENIZE_EXAMPLE = 'ids = tokenizer("some text", return_tensors="pt").input_ids[0]'


def _as_ids(ids, what: str) -> torch.Tensor:
    if ids is None:
        raise InputError(f"{what} is missing: pass token ids (a list of ints or a 1-D/[1, T] tensor)")
    if isinstance(ids, (str, bytes)) or hasattr(ids, "keys"):
        got = "text" if isinstance(ids, (str, bytes)) else f"a {type(ids).__name__} (the tokenizer's whole output)"
        raise InputError(f"{what} must be token ids, not {got}: tokenize first, e.g. {TOKENIZE_EXAMPLE}")
    try:
        t = torch.as_tensor(ids)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(
            f"{what} must be token ids (a list of ints or a 1-D tensor), not {type(ids).__name__}: tokenize "
            f"first, e.g. {TOKENIZE_EXAMPLE}"
        ) from exc
    if t.dim() == 2:
        if t.shape[0] != 1:
            raise InputError(
                f"{what} has batch size {t.shape[0]}; a kvstack cache holds one sequence - compress each "
                "context separately"
            )
        t = t[0]
    if t.dim() != 1:
        raise InputError(f"{what} must be 1-D token ids (or shape [1, T]); got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise InputError(f"{what} is empty: give at least one token (did the tokenizer get an empty string?)")
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise InputError(f"{what} must hold integer token ids, not {t.dtype}")
    return t.long()


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
) -> KVCache:
    """Prefill ``context_ids`` with ``model`` and compress its KV cache with ``recipe``.

    ``question_ids=None`` builds a question-agnostic cache reusable for many questions;
    passing the question lets query-aware stages (Q2C) score tokens by it. The question
    itself is not stored: pass it again to :func:`generate`. ``fingerprint="weights"`` marks
    the cache with a hash of the model's config *and weights* (``kvstack.hf.fingerprint``), so
    a fine-tune with the same config refuses it; the default marks the config only.
    """
    from kvstack.hf.fingerprint import model_fingerprint
    from kvstack.hf.model import check_context_window, model_info
    from kvstack.hf.prefill import prefill

    info = model_info(model)
    marked = model_fingerprint(model, fingerprint)
    recipe_obj = recipe if isinstance(recipe, Recipe) else Recipe.parse(recipe)
    ctx_ids = _as_ids(context_ids, "context_ids")
    q_ids = None if question_ids is None else _as_ids(question_ids, "question_ids")
    n_q = 0 if q_ids is None else q_ids.numel()
    check_context_window(model, ctx_ids.numel() + n_q, f"a context of {ctx_ids.numel()} tokens (+ {n_q} of question)")
    if recipe_obj.needs_question and q_ids is None:
        raise InputError(
            f"recipe '{recipe_obj.text}' is query-aware and needs question_ids; pass the question, or "
            "use a question-agnostic stage (snapkv, streaming)"
        )
    window = window_queries_needed([recipe_obj])
    pre = prefill(
        model, info, ctx_ids, recipe_obj.needs, q_ids, window_queries=window, chunk_size=chunk_size, progress=progress
    )
    ctx = stage_context(info, pre.captures, recipe_obj, q_ids)
    start = time.perf_counter()
    cache = recipe_obj.apply(pre.cache, ctx)
    cache.stats.update(prefill_seconds=pre.seconds, compress_seconds=time.perf_counter() - start)
    cache.model_fingerprint = marked
    return cache


def check_model(model, cache: KVCache, fingerprint: str = "config") -> None:
    """Raise ModelError if ``cache`` was built by a different model (config fingerprint, or config
    and weights when the cache carries a weights fingerprint or ``fingerprint="weights"``)."""
    from kvstack.hf.fingerprint import expected_for

    if not cache.model_fingerprint and fingerprint == "config":
        return
    want = expected_for(model, cache.model_fingerprint, fingerprint)
    if cache.model_fingerprint != want:
        raise ModelError(
            f"this cache was built by another model (fingerprint {cache.model_fingerprint}, this model "
            f"{want}); compress the context again with this model"
        )


@torch.no_grad()
def generate(model, cache: KVCache, question_ids, max_new_tokens: int = 32, *, fingerprint: str = "config",
             **generate_kwargs) -> torch.Tensor:
    """Answer ``question_ids`` from a compressed ``cache`` with ``model.generate``; greedy by default.

    Returns only the new token ids (1-D). ``cache`` is not modified, so it can be reused.
    ``fingerprint="weights"`` refuses a cache that does not carry a weights fingerprint (a cache
    that does is always checked against the weights). Extra keyword arguments go to
    ``model.generate`` (e.g. ``do_sample=True``).
    """
    from kvstack.hf.attention import enable
    from kvstack.hf.cache import CompressedCache
    from kvstack.hf.compat import cache_kwargs
    from kvstack.hf.model import check_context_window, model_info

    if not isinstance(cache, KVCache):
        raise InputError(f"cache must be a kvstack.KVCache from kvstack.compress, not {type(cache).__name__}")
    check_model(model, cache, fingerprint)
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens={max_new_tokens}: ask for at least 1 token")
    q_ids = _as_ids(question_ids, "question_ids")
    total = cache.context_length + q_ids.numel() + max_new_tokens
    check_context_window(model, total, f"{cache.context_length} context + {q_ids.numel()} question + "
                         f"{max_new_tokens} new tokens")
    info = model_info(model)
    device = next(model.parameters()).device
    input_ids = torch.cat([cache.context_ids.long().cpu(), q_ids.cpu()]).view(1, -1).to(device)
    hf_cache = CompressedCache(cache, info.dtype)
    generate_kwargs.setdefault("do_sample", False)
    if not generate_kwargs["do_sample"]:
        for key in ("temperature", "top_p", "top_k"):
            generate_kwargs.setdefault(key, None)
    pad = getattr(model.generation_config, "pad_token_id", None)
    if pad is None:
        pad = getattr(model.generation_config, "eos_token_id", None)
        pad = pad[0] if isinstance(pad, list) else pad
    with enable(model):
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            **cache_kwargs(hf_cache),
            max_new_tokens=max_new_tokens,
            pad_token_id=pad if pad is not None else 0,
            **generate_kwargs,
        )
    return out[0, input_ids.shape[1] :].cpu()
