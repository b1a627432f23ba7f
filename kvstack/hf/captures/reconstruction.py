"""The ``kvzip`` capture: KVzip's context-reconstruction pass. Once the context is cached, feed
it again right after itself, in chunks, and keep per layer, KV head and context position the
largest attention any reconstruction query gives it (with ``kvzip_seconds``, what the pass cost)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from kvstack.grammar.needs import KVZIP_SECONDS, NEED_KVZIP
from kvstack.hf.attention import allowed, capturing, enable
from kvstack.hf.captures.registry import CaptureInputs, CaptureProvider
from kvstack.hf.compat import cache_kwargs
from kvstack.hf.model import ModelInfo
from kvstack.kv import KVCache

KVZIP_CHUNK = 1024  # reconstruction tokens per pass: each chunk attends to the context plus itself
_BLOCK = 1 << 24  # logits per scoring step


@dataclass
class _Reconstruction:
    """Attention hook session: per layer, the max attention each context position gets."""

    context_length: int
    num_kv_heads: int
    scores: dict[int, torch.Tensor] = field(default_factory=dict)

    def observe(self, module, query: torch.Tensor, key: torch.Tensor, kwargs: dict) -> None:
        meta = getattr(key, "_kvstack", None)
        if meta is None:
            return
        layer = int(module.layer_idx)
        q = query[0].float()  # [Hq, n, D]
        k = key[0].float()  # [Hkv, S, D]
        hq, n, d = q.shape
        hk, s = k.shape[0], k.shape[1]
        q = q.reshape(hk, hq // hk, n, d)
        scaling = kwargs.get("scaling") or d**-0.5
        softcap = kwargs.get("softcap")
        ctx_col = meta.valid & (meta.positions < self.context_length)  # [Hkv, S] rows of the context
        best = torch.zeros(hk, s, device=k.device)
        step = max(1, _BLOCK // max(hq * s, 1))
        for a in range(0, n, step):
            b = min(a + step, n)
            logits = torch.einsum("hgqd,hsd->hgqs", q[:, :, a:b], k) * scaling
            if softcap:
                logits = torch.tanh(logits / softcap) * softcap
            ok = allowed(meta.positions, meta.valid, meta.query_positions[a:b], meta.window)
            probs = torch.softmax(logits.masked_fill(~ok.unsqueeze(1), float("-inf")), dim=-1).nan_to_num(0.0)
            best = torch.maximum(best, probs.amax(dim=(1, 2)))
        total = self.scores.setdefault(layer, torch.zeros(hk, self.context_length))
        pos = meta.positions.masked_fill(~ctx_col, 0).cpu()
        per_pos = torch.zeros(hk, self.context_length).scatter_reduce(
            1, pos, best.masked_fill(~ctx_col, 0.0).cpu(), reduce="amax"
        )
        torch.maximum(total, per_pos, out=total)


@torch.no_grad()
def reconstruction_scores(model, info: ModelInfo, cache: KVCache, chunk: int = KVZIP_CHUNK) -> dict[int, torch.Tensor]:
    """KVzip's scores: feed the context again after itself, ``chunk`` tokens at a time (each chunk
    right after the context, over a fresh view of the full cache), and keep per layer, KV head
    and context position the largest attention probability any reconstruction query gives it."""
    from kvstack.hf.cache import CompressedCache

    ids = cache.context_ids.long()
    device = next(model.parameters()).device
    session = _Reconstruction(cache.context_length, info.num_kv_heads)
    with enable(model), capturing(session):
        for a in range(0, ids.numel(), chunk):
            part = ids[a : a + chunk].view(1, -1).to(device)
            model(input_ids=part, **cache_kwargs(CompressedCache(cache, info.dtype)), use_cache=True, logits_to_keep=1)
    return session.scores


def kvzip_capture(inputs: CaptureInputs) -> dict[str, Any]:
    start = time.perf_counter()
    scores = reconstruction_scores(inputs.model, inputs.info, inputs.cache)
    return {NEED_KVZIP: scores, KVZIP_SECONDS: time.perf_counter() - start}


PROVIDER = CaptureProvider(NEED_KVZIP, after=kvzip_capture)
