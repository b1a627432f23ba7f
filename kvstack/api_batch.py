"""Batched :func:`kvstack.generate`: B compressed sequences answered in ONE ``model.generate`` call.

The inputs are padded (:func:`kvstack.hf.batch_cache.batch_layout`), the cache keeps each
sequence ragged and exact (:class:`~kvstack.hf.batch_cache.BatchedCompressedCache`), and each
returned row is cut where the one-sequence call would have stopped, so row ``i`` equals
``kvstack.generate(model, batch[i], questions[i], ...)`` under greedy decoding.
"""

from __future__ import annotations

import torch

from kvstack.api_inputs import batch_questions, check_model
from kvstack.errors import InputError, ModelError
from kvstack.kv_batch import KVBatch


def check_batch_model(model, batch: KVBatch, fingerprint: str) -> None:
    """ModelError naming the first sequence of ``batch`` that another model built."""
    for i, cache in enumerate(batch):
        try:
            check_model(model, cache, fingerprint)
        except ModelError as exc:
            raise ModelError(f"sequence {i} of the batch: {exc}") from exc


@torch.no_grad()
def generate_batch(model, batch: KVBatch, question_ids, max_new_tokens: int, fingerprint: str,
                   generate_kwargs: dict, graphs: bool = False) -> list[torch.Tensor]:
    """One batched ``model.generate`` over ``batch`` (``graphs``: kvstack's greedy step loop); row ``i`` answers
    ``question_ids[i]`` (new ids, 1-D)."""
    from kvstack.hf.attention import enable
    from kvstack.hf.batch_cache import BatchedCompressedCache, batch_layout
    from kvstack.hf.compat import cache_kwargs
    from kvstack.hf.generation import cut_after_eos, eos_ids, generation_kwargs
    from kvstack.hf.model import check_context_window, model_info

    check_batch_model(model, batch, fingerprint)
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens={max_new_tokens}: ask for at least 1 token")
    questions = batch_questions(question_ids, len(batch))
    for i, (cache, q) in enumerate(zip(batch, questions, strict=True)):
        check_context_window(model, cache.context_length + q.numel() + max_new_tokens,
                             f"sequence {i}: {cache.context_length} context + {q.numel()} question + "
                             f"{max_new_tokens} new tokens")
    info = model_info(model)
    device = next(model.parameters()).device
    kwargs, pad = generation_kwargs(model, generate_kwargs)
    layout = batch_layout([c.context_ids for c in batch], questions, pad)
    hf_cache = BatchedCompressedCache(list(batch), layout, info.dtype)
    eos = eos_ids(model, kwargs)
    if graphs:
        from kvstack.hf.step_loop import greedy_loop

        mask = layout.attention_mask.to(device)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)  # as generate derives them from the mask
        width = layout.context_width
        with enable(model):
            new = greedy_loop(model, hf_cache, layout.input_ids[:, width:].to(device), positions[:, width:],
                              max_new_tokens, eos, attention_mask=mask,
                              min_new_tokens=kwargs.get("min_new_tokens") or 0).cpu()
        return [cut_after_eos(row, eos) for row in new]
    with enable(model):
        out = model.generate(
            input_ids=layout.input_ids.to(device),
            attention_mask=layout.attention_mask.to(device),
            **cache_kwargs(hf_cache),
            max_new_tokens=max_new_tokens,
            pad_token_id=pad,
            **kwargs,
        )
    new = out[:, layout.input_ids.shape[1] :].cpu()
    return [cut_after_eos(row, eos) for row in new]
