"""Each context token's surprisal, -log p(token | the tokens before it), from the prefill's own logits.

Question-agnostic selection (``surprisal``) asks for it: what the model could not predict is what
the context adds - a needle's key and value in an essay, a fact among boilerplate - the idea of
Selective Context and LLMLingua, applied to the KV cache. It costs no extra pass: the prefill
keeps every position's logits instead of the last one, and they are reduced here chunk by chunk,
a block of rows at a time, so a 262k-entry vocabulary never needs a float32 copy of a whole chunk.
"""

from __future__ import annotations

from typing import Any

import torch

from kvstack.grammar.needs import NEED_TOKEN_NLL
from kvstack.hf.captures.registry import CaptureProvider

_BLOCK = 1 << 24  # logits per float32 log-softmax step


class TokenNLL:
    """Accumulates surprisal over prefill chunks; position 0 (nothing to predict it from) gets +inf."""

    def __init__(self, total: int):
        self.nll = torch.full((total,), float("inf"))
        self._last: torch.Tensor | None = None  # the previous chunk's last logits predict this chunk's first token

    def update(self, logits: torch.Tensor, ids: torch.Tensor, start: int) -> None:
        """``logits``: ``[n, V]`` of the chunk whose ``[n]`` token ids begin at context position ``start``."""
        if self._last is None:  # the very first token has nothing to predict it
            preds, targets, first = logits[:-1], ids[1:], start + 1
        else:
            preds, targets, first = torch.cat([self._last.view(1, -1), logits[:-1]]), ids, start
        rows = max(1, _BLOCK // max(1, logits.shape[-1]))
        for a in range(0, targets.shape[0], rows):
            p = preds[a : a + rows].float()
            t = targets[a : a + rows].to(p.device).long()
            got = torch.nn.functional.cross_entropy(p, t, reduction="none")
            self.nll[first + a : first + a + got.shape[0]] = got.cpu()
        self._last = logits[-1].detach()

    def result(self) -> dict[str, Any]:
        return {NEED_TOKEN_NLL: self.nll}


PROVIDER = CaptureProvider(NEED_TOKEN_NLL, during=TokenNLL)
