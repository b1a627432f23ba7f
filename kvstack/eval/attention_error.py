"""How far a compressed cache moves attention, measured with the model's own queries.

For the question's tokens (their real queries at their real positions), each layer's attention
output over the compressed cache is compared with the output over the full cache: the relative
error per (head, query) and the share of (head, query) pairs whose most-attended context token
changes. It needs no generation, so it is a cheap real-model signal for tests and benchmarks;
retrieval accuracy is still the claim, this explains it.

The queries are captured by kvstack's own prefill, so every model kvstack compresses is covered
(Llama, Mistral, Qwen, SmolLM2, Gemma 2/3 with their query norms and local/global rotary).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvstack.errors import InputError
from kvstack.kv import KVCache


@dataclass(frozen=True)
class LayerError:
    relative: float  # mean over heads and queries of |o_q - o_full| / |o_full|
    top1_changed: float  # share of (head, query) pairs whose argmax context token changes


def head_rows(layer) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One layer's decoded keys and values, split per KV head (float32)."""
    k, v = layer.keys.decode().float(), layer.values.decode().float()
    spans = list(zip(layer.head_offsets(), layer.lengths))
    return [k[o : o + n] for o, n in spans], [v[o : o + n] for o, n in spans]


@torch.no_grad()
def question_queries(model, full: KVCache, question_ids: torch.Tensor) -> dict:
    """The question's post-RoPE queries per layer and each layer's (scaling, softcap), from kvstack's own prefill
    capture. They depend on the context and question only: compute them once and pass them to
    :func:`attention_errors` for every cache of that context."""
    from kvstack.grammar.needs import NEED_QUESTION_QUERIES
    from kvstack.hf.model import model_info
    from kvstack.hf.prefill import prefill

    if question_ids.numel() == 0:
        raise InputError("attention_errors needs the question's tokens: their queries are what it compares")
    return prefill(model, model_info(model), full.context_ids.long(), frozenset({NEED_QUESTION_QUERIES}),
                   question_ids=question_ids.long()).captures


@torch.no_grad()
def attention_errors(model, full: KVCache, cache: KVCache, question_ids: torch.Tensor,
                     captured: dict | None = None) -> list[LayerError]:
    """Per layer, the error of ``cache``'s attention outputs against ``full``'s for the question's queries.

    The queries come from kvstack's own prefill capture (post-norm, post-RoPE, at the positions right after
    the context), with each layer's own score scaling and soft cap, so any model kvstack compresses works:
    Llama-family, Gemma 2/3 (query norms, local/global rotary), Qwen3. The comparison is over the rows each
    cache holds (a sliding-window layer's window).
    """
    from kvstack.grammar.needs import ATTN_PARAMS, NEED_QUESTION_QUERIES

    if captured is None:  # ``captured``: :func:`question_queries` of the same context and question
        captured = question_queries(model, full, question_ids)
    out = []
    for i, (lf, lq) in enumerate(zip(full.layers, cache.layers, strict=True)):
        q = captured[NEED_QUESTION_QUERIES][i].float()  # [Hq, n, D]
        scaling, softcap = captured.get(ATTN_PARAMS, {}).get(i, (None, None))
        scaling = scaling if scaling is not None else q.shape[-1] ** -0.5
        (kf, vf), (kq, vq) = head_rows(lf), head_rows(lq)
        group = q.shape[0] // len(kf)
        rel, flips = [], []
        for hq in range(q.shape[0]):
            kv = hq // group
            pf = _probabilities(q[hq] @ kf[kv].T.to(q.device) * scaling, softcap)
            pq = _probabilities(q[hq] @ kq[kv].T.to(q.device) * scaling, softcap)
            of, oq = pf @ vf[kv].to(q.device), pq @ vq[kv].to(q.device)
            rel.append(((of - oq).norm(dim=-1) / of.norm(dim=-1).clamp_min(1e-12)).mean().item())
            if pf.shape[-1] == pq.shape[-1]:  # eviction changes which token is which: top-1 only for quantization
                flips.append((pf.argmax(-1) != pq.argmax(-1)).float().mean().item())
        out.append(LayerError(sum(rel) / len(rel), sum(flips) / len(flips) if flips else float("nan")))
    return out


def _probabilities(scores: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """Softmax of attention scores after the model's soft cap (Gemma 2), as its attention computes them."""
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    return torch.softmax(scores, -1)
