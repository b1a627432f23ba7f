"""The prefill driver: run the model over the context once, in chunks, and capture what
the recipe's stages declared they need: attention statistics through the attention hook, anything
else through the capture provider registered for it (:mod:`kvstack.hf.captures`). The driver names
no stage: a method that needs something new registers a provider.

Chunking bounds memory on long prompts (activations and logits of one chunk at a time;
attention statistics are scored per chunk of queries), and drives the progress bar.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import DynamicCache

from kvstack.grammar.needs import (
    ATTN_PARAMS,
    NEED_QUESTION_QUERIES,
    NEED_WINDOW_QUERIES,
    attention_need,
    attention_strides,
)
from kvstack.hf.attention import CaptureSession, capturing, enable
from kvstack.hf.captures import CaptureInputs, providers_for
from kvstack.hf.compat import cache_kwargs
from kvstack.hf.model import ModelInfo
from kvstack.kv import KVCache, KVLayer


@dataclass
class Prefill:
    """A full (uncompressed) cache of the context, and the captures made while building it."""

    cache: KVCache
    captures: dict = field(default_factory=dict)
    seconds: float = 0.0
    last_logits: torch.Tensor | None = None


def _layer_kv(dc: DynamicCache, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    layer = dc.layers[index]
    return layer.keys[0], layer.values[0]


@torch.no_grad()
def prefill(
    model,
    info: ModelInfo,
    context_ids: torch.Tensor,
    needs: frozenset[str] = frozenset(),
    question_ids: torch.Tensor | None = None,
    window_queries: int = 0,
    chunk_size: int = 1024,
    progress: bool = False,
) -> Prefill:
    """Prefill ``context_ids`` ([T] ids) and return the dense cache plus captures.

    Captures (keys of ``Prefill.captures``), each a dict layer -> tensor:
      * ``attention``: ``[Hq, T]`` attention each context key received, summed over all
        context queries (H2O-style statistics), in the same pass as the model's attention;
        ``attention:stride=k``: the same from every k-th query (weighted by k) and the last 64;
      * ``window_queries``: ``[Hq, n, D]`` post-RoPE queries of the last ``n`` context tokens;
      * ``question_queries``: ``[Hq, q, D]`` post-RoPE queries of the question, at the
        positions it will really have (right after the context); the question's keys are
        not kept in the cache;
      * whatever the providers of the other ``needs`` supply (:mod:`kvstack.hf.captures`), e.g.
        ``token_nll``: ``[T]`` each context token's surprisal (not per layer; position 0: inf).
    """
    device = next(model.parameters()).device
    ids = context_ids.to(device).view(1, -1)
    total = ids.shape[1]
    session = CaptureSession(
        context_length=total,
        attention_strides=attention_strides(needs),
        window_queries=min(window_queries, total) if NEED_WINDOW_QUERIES in needs else 0,
        want_question=NEED_QUESTION_QUERIES in needs,
    )
    dc = DynamicCache()
    bar = _progress(total, progress)
    start = time.perf_counter()
    logits = None
    providers = providers_for(needs)
    observers = [p.during(total) for p in providers if p.during is not None]
    with enable(model), capturing(session):
        for a in range(0, total, chunk_size):
            b = min(a + chunk_size, total)
            session.q_start = a
            keep = 0 if observers else 1  # 0: every position's logits
            out = model(input_ids=ids[:, a:b], **cache_kwargs(dc), use_cache=True, logits_to_keep=keep)
            for observer in observers:
                observer.update(out.logits[0], ids[0, a:b], a)
            logits = out.logits[0, -1].float()
            if bar is not None:
                bar.update(b - a)
        if session.want_question and question_ids is not None and question_ids.numel():
            session.phase, session.q_start = "question", total
            q_ids = question_ids.to(device).view(1, -1)
            model(input_ids=q_ids, **cache_kwargs(dc), use_cache=True, logits_to_keep=1)
    received = {}
    if session.received is not None:  # strided H2O queries are scored here, against the dense keys
        received = session.received.finish({i: _layer_kv(dc, i)[0] for i in range(info.num_layers)})
    seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()

    layers = []
    for i in range(info.num_layers):
        k, v = _layer_kv(dc, i)
        k, v = k[:, :total], v[:, :total]
        window = info.sliding_windows[i]
        positions = None
        if window is not None and total > window - 1:
            keep = window - 1  # what a plain sliding-window cache keeps after the prompt
            k, v = k[:, -keep:], v[:, -keep:]
            positions = torch.arange(total - keep, total)
        layers.append(KVLayer.from_dense(k.contiguous(), v.contiguous(), positions, window))
    cache = KVCache(
        layers=layers,
        context_ids=context_ids.detach().view(-1).to(torch.int32).cpu(),
        dense_dtype=info.dtype,
        model_fingerprint=info.fingerprint,
        dense_layout=[(info.num_kv_heads, info.head_dim, w) for w in info.sliding_windows],
    )
    captures: dict = {}
    for stride, sums in received.items():
        captures[attention_need(stride)] = sums
    if session.window_queries:
        captures[NEED_WINDOW_QUERIES] = {i: session.window_queries_of(i) for i in session.window}
    if session.want_question:
        captures[NEED_QUESTION_QUERIES] = session.question
    if captures:
        captures[ATTN_PARAMS] = session.params  # the model's own score scaling and softcap per layer
    for observer in observers:
        captures.update(observer.result())
    inputs = CaptureInputs(model, info, cache, frozenset(needs))
    for provider in providers:
        if provider.after is not None:  # e.g. rotary tables, o_proj rows, KVzip's reconstruction pass
            captures.update(provider.after(inputs))
    return Prefill(cache=cache, captures=captures, seconds=seconds, last_logits=logits)


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="tok", desc="prefill", leave=False)
