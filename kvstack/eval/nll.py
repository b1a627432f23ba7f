"""Negative log-likelihood of a continuation given a compressed context, teacher-forced.

The continuation runs through a :class:`~kvstack.hf.CompressedCache` in one forward pass:
the logits at each continuation token predict the next one, so ``n`` tokens give ``n - 1``
scored tokens (the first token's prediction comes from the context's last logits, which no
cache changes). With the ``identity`` recipe this equals a plain full-context forward pass;
:func:`full_context_nll` is that reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kvstack.errors import InputError
from kvstack.kv import KVCache


def _score(logits: torch.Tensor, ids: torch.Tensor, first: int) -> tuple[float, int]:
    """Sum of -log p(ids[t] | ids[<t]) for t >= first, from logits [len(ids), V] aligned with ids."""
    pred = logits[first - 1 : -1].double()
    target = ids[first:]
    return float(F.cross_entropy(pred, target.to(pred.device), reduction="sum")), int(target.numel())


@torch.no_grad()
def continuation_nll(
    model, cache: KVCache, continuation_ids: torch.Tensor, question_ids: torch.Tensor | None = None
) -> tuple[float, int]:
    """``(sum of NLL in nats, tokens scored)`` of ``continuation_ids`` after the cached context
    (and ``question_ids``, unscored, when given)."""
    from kvstack.api_inputs import check_model
    from kvstack.hf import CompressedCache, enable, model_info
    from kvstack.hf.compat import cache_kwargs

    check_model(model, cache)
    cont = torch.as_tensor(continuation_ids).long().view(-1)
    q = torch.empty(0, dtype=torch.long) if question_ids is None else torch.as_tensor(question_ids).long().view(-1)
    if cont.numel() < 2 and q.numel() == 0:
        raise InputError("the continuation needs at least 2 tokens to score (one is consumed as input)")
    ids = torch.cat([q, cont])
    device = next(model.parameters()).device
    hf_cache = CompressedCache(cache, model_info(model).dtype)
    with enable(model):
        logits = model(input_ids=ids.view(1, -1).to(device), **cache_kwargs(hf_cache), use_cache=True).logits[0]
    return _score(logits, ids, max(q.numel(), 1))


@torch.no_grad()
def full_context_nll(
    model, context_ids: torch.Tensor, continuation_ids: torch.Tensor, question_ids: torch.Tensor | None = None
) -> tuple[float, int]:
    """The same quantity from one plain forward pass over context + question + continuation."""
    q = torch.empty(0, dtype=torch.long) if question_ids is None else torch.as_tensor(question_ids).long().view(-1)
    ctx = torch.as_tensor(context_ids).long().view(-1)
    cont = torch.as_tensor(continuation_ids).long().view(-1)
    ids = torch.cat([ctx, q, cont])
    device = next(model.parameters()).device
    logits = model(input_ids=ids.view(1, -1).to(device)).logits[0]
    first = ctx.numel() + max(q.numel(), 1)
    return _score(logits, ids, first)
