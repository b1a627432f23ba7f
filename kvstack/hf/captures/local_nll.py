"""Each context token's *local* surprisal: -log p(token | only the ``window`` tokens before it).

Why: global surprisal (``token_nll``, the prefill's own logits) misses what induction makes
predictable. RULER's multi-key needles repeat the first needle's template, so once the model
has read one needle the others' words are cheap to predict and only their key words stay
surprising. Under a short window the first needle is out of sight, so every needle is as
surprising as the first (on SmolLM2-135M, 4k RULER multi-key: the share of the context the
answer needs drops from up to 81% to about 10%; benchmarks/surprisal_ranks.py).

How: an extra pass, model-agnostic. The context is cut into chunks of ``window`` tokens; each
chunk is fed with the ``window`` tokens before it, as a fresh sequence (positions from 0, no
cache), and only the chunk's own next-token losses are kept. A token at offset ``j`` of its
chunk therefore sees ``window + j`` earlier tokens (``window`` to ``2 * window - 1``); cost about
two prefills' worth of tokens, in short sequences (no quadratic term). Position 0 gets +inf, as
in ``token_nll``.
"""

from __future__ import annotations

from typing import Any

import torch

from kvstack.grammar.needs import NEED_LOCAL_NLL, local_nll_need, local_nll_windows
from kvstack.hf.captures.registry import CaptureInputs, CaptureProvider

_BLOCK = 1 << 25  # logits per forward batch (rows x vocabulary)


@torch.no_grad()
def windowed_nll(model: Any, ids: torch.Tensor, window: int) -> torch.Tensor:
    """``[T]`` float32 -log p(ids[t] | ids[max(0, c - window) : t]) where ``c`` starts ``t``'s chunk."""
    ids = ids.view(-1).long()
    total = ids.numel()
    out = torch.full((total,), float("inf"))
    if total < 2:
        return out
    device = next(model.parameters()).device
    vocab = int(getattr(model.config, "vocab_size", None) or model.get_output_embeddings().weight.shape[0])
    starts = list(range(0, total, window))
    # sequences of equal length batch together: every full chunk after the first has the same shape
    groups: dict[int, list[int]] = {}
    for s in starts:
        groups.setdefault(min(s + window, total) - max(0, s - window), []).append(s)
    for length, group in groups.items():
        per = max(1, _BLOCK // max(1, length * vocab))
        for a in range(0, len(group), per):
            batch = group[a : a + per]
            seqs = torch.stack([ids[max(0, s - window) : min(s + window, total)] for s in batch]).to(device)
            logits = model(input_ids=seqs, use_cache=False).logits
            for row, s in enumerate(batch):
                lead = s - max(0, s - window)  # tokens of context before the chunk in this sequence
                first = max(lead, 1)  # the sequence's own first token has no prediction
                preds = logits[row, first - 1 : length - 1].float()
                targets = seqs[row, first:length]
                got = torch.nn.functional.cross_entropy(preds, targets, reduction="none")
                out[s - lead + first : s - lead + length] = got.cpu()
    return out


def local_nll_capture(inputs: CaptureInputs) -> dict[str, Any]:
    """Every windowed surprisal the recipe asked for (one pass per distinct window)."""
    ids = inputs.cache.context_ids
    return {local_nll_need(w): windowed_nll(inputs.model, ids, w) for w in local_nll_windows(inputs.needs)}


PROVIDER = CaptureProvider(NEED_LOCAL_NLL, after=local_nll_capture)
