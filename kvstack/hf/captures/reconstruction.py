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
from kvstack.hf.attention_scored import flash_with_lse
from kvstack.hf.captures.registry import CaptureInputs, CaptureProvider
from kvstack.hf.compat import cache_kwargs
from kvstack.hf.model import ModelInfo
from kvstack.kv import KVCache

KVZIP_CHUNK = 1024  # reconstruction tokens per pass: each chunk attends to the context plus itself
_BLOCK = 1 << 22  # logits per scoring step (16 MB in fp32: in place, the softmax stays near the caches)


@dataclass
class _Reconstruction:
    """Attention hook session: per layer, the max attention each context position gets."""

    context_length: int
    scores: dict[int, torch.Tensor] = field(default_factory=dict)

    def observe(
        self, module, query: torch.Tensor, key: torch.Tensor, kwargs: dict,
        value: torch.Tensor | None = None, mask: torch.Tensor | None = None, sdpa: bool = False,
    ) -> torch.Tensor | None:
        """Score this layer's context rows; returns the attention output ``[1, n, Hq, D]`` when it
        came from the same CPU flash kernel the model's SDPA calls (whose log-sum-exps make the
        scoring one product and a max), else None (the model attends)."""
        meta = getattr(key, "_kvstack", None)
        if meta is None:
            return None
        scaling = kwargs.get("scaling") or query.shape[-1] ** -0.5
        out = lse = None
        if _fused(query, value, kwargs, sdpa):
            out, lse = flash_with_lse(query, key, value, mask, scaling)
        best = _best_log_probs(query, key, meta, scaling, kwargs.get("softcap"), lse).exp_()
        ctx_col = meta.valid & (meta.positions < self.context_length)  # [Hkv, S] rows of the context
        total = self.scores.setdefault(int(module.layer_idx), torch.zeros(key.shape[1], self.context_length))
        pos = meta.positions.masked_fill(~ctx_col, 0).cpu()
        per_pos = torch.zeros(key.shape[1], self.context_length).scatter_reduce(
            1, pos, best.masked_fill(~ctx_col, 0.0).cpu(), reduce="amax"
        )
        torch.maximum(total, per_pos, out=total)
        return out


def _fused(query: torch.Tensor, value: torch.Tensor | None, kwargs: dict, sdpa: bool) -> bool:
    """May this layer attend through the CPU flash kernel here (what the model's SDPA would run)?
    Not with softcapping or attention sinks, which that kernel does not apply."""
    plain = not kwargs.get("softcap") and "s_aux" not in kwargs and not kwargs.get("dropout")
    return sdpa and plain and value is not None and query.device.type == "cpu" and query.shape[0] == 1


def _best_log_probs(
    query: torch.Tensor, key: torch.Tensor, meta, scaling: float, softcap: float | None, lse: torch.Tensor | None,
) -> torch.Tensor:
    """``[Hkv, S]``: per key row, the largest log attention probability any query of its KV head's
    group gives it. With the queries' log-sum-exps ``lse [Hq, n]`` known, that is a max over
    ``logit - lse``; without (a GPU, softcapping), a softmax in place, block by block."""
    hq, n, d = query.shape[1:]
    hk, s = key.shape[1], key.shape[2]
    g = hq // hk
    q = query[0].float().reshape(hk, g, n, d) * (1.0 if softcap else scaling)  # the scaling folded in
    k_t = key[0].float().transpose(1, 2)  # [Hkv, D, S]
    # rows no query may see get -inf; with lse known only a window or padding needs the mask
    # (every context row precedes every reconstruction query; chunk rows are not scored)
    masked = lse is None or meta.window is not None or not bool(meta.valid.all())
    best = torch.full((hk, s), float("-inf"), device=key.device)
    step = max(1, _BLOCK // max(hq * s, 1))
    for a in range(0, n, step):
        b = min(a + step, n)
        logits = torch.bmm(q[:, :, a:b].reshape(hk, g * (b - a), d), k_t).view(hk, g, b - a, s)
        if softcap:
            logits.mul_(scaling).div_(softcap).tanh_().mul_(softcap)
        if masked:
            blocked = ~allowed(meta.positions, meta.valid, meta.query_positions[a:b], meta.window)
            logits.masked_fill_(blocked.unsqueeze(1), float("-inf"))
        if lse is not None:
            logits.sub_(lse.view(hk, g, n, 1)[:, :, a:b].to(logits.device, torch.float32))
        else:  # log-softmax over keys, in place (a fully masked query row stays -inf, not NaN)
            logits.sub_(logits.amax(-1, keepdim=True).clamp_min(-1e30))
            logits.sub_(logits.exp().sum(-1, keepdim=True).clamp_min(1e-30).log_())
        torch.maximum(best, logits.view(hk, g * (b - a), s).amax(1), out=best)
    return best


@torch.no_grad()
def reconstruction_scores(model, info: ModelInfo, cache: KVCache, chunk: int = KVZIP_CHUNK) -> dict[int, torch.Tensor]:
    """KVzip's scores: feed the context again after itself, ``chunk`` tokens at a time (each chunk
    right after the context, over a fresh view of the full cache), and keep per layer, KV head
    and context position the largest attention probability any reconstruction query gives it."""
    from kvstack.hf.cache import CompressedCache

    ids = cache.context_ids.long()
    device = next(model.parameters()).device
    session = _Reconstruction(cache.context_length)
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
