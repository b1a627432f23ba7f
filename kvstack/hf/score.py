"""Teacher-forced scoring of a continuation given a compressed context.

What quality measures need (perplexity, KL divergence to the full cache): the model's
next-token log-probabilities over a known continuation, with attention reading the
compressed cache exactly as generation would.
"""

from __future__ import annotations

import torch

from kvstack.kv import KVCache


@torch.no_grad()
def continuation_logprobs(
    model, cache: KVCache, continuation_ids: torch.Tensor, first_logits: torch.Tensor | None = None
) -> torch.Tensor:
    """Log-probabilities (float32) predicting the continuation tokens, from one forward pass.

    Row ``i`` predicts ``continuation_ids[i + 1]`` (``n - 1`` rows). The prediction of the
    first continuation token comes from the context's last logits, which only the prefill
    saw: pass them as ``first_logits`` (``kvstack.hf.prefill.Prefill.last_logits``) to get
    ``n`` rows, row ``i`` predicting ``continuation_ids[i]``.
    """
    from kvstack.hf.attention import enable
    from kvstack.hf.cache import CompressedCache
    from kvstack.hf.compat import cache_kwargs

    ids = torch.as_tensor(continuation_ids).view(1, -1).to(next(model.parameters()).device)
    hf = CompressedCache(cache, next(model.parameters()).dtype)
    with enable(model):
        logits = model(input_ids=ids, **cache_kwargs(hf), use_cache=True).logits[0].float()
    rows = logits[:-1]
    if first_logits is not None:
        rows = torch.cat([first_logits.to(rows).view(1, -1), rows])
    return torch.log_softmax(rows, dim=-1)


def nll(logprobs: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean negative log-likelihood (nats/token) of ``targets`` under ``logprobs [n, vocab]``."""
    return float(-logprobs.gather(1, targets.to(logprobs.device).view(-1, 1)).mean())


def kl_to(reference: torch.Tensor, logprobs: torch.Tensor) -> float:
    """Mean KL(reference || compressed) over positions, both ``[n, vocab]`` log-probabilities."""
    return float((reference.exp() * (reference - logprobs)).sum(-1).mean())
