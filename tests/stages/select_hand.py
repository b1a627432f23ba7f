"""A cache built by hand from reference kept sets (rows taken from transformers' dense cache),
to check that what a stage keeps generates exactly what those rows generate."""

from __future__ import annotations

import torch

import kvstack
from kvstack.kv import DenseRows, KVCache, KVLayer


def hand_cache(like: KVCache, ids: torch.Tensor, keys, values, sets, new_values=None) -> KVCache:
    """``sets[layer][head]``: kept positions; ``new_values[layer][head]``: ``[n, D]`` to store instead."""
    layers = []
    for layer, heads in enumerate(sets):
        pos = [sorted(s) for s in heads]
        k = torch.cat([keys[layer][h, p] for h, p in enumerate(pos)]).float()
        if new_values is None:
            v = torch.cat([values[layer][h, p] for h, p in enumerate(pos)]).float()
        else:
            v = torch.cat(new_values[layer]).float()
        flat = torch.tensor([p for ps in pos for p in ps], dtype=torch.int32)
        layers.append(KVLayer(DenseRows(k), DenseRows(v), tuple(len(p) for p in pos), flat))
    return KVCache(
        layers=layers, context_ids=ids.to(torch.int32), dense_dtype=torch.float32,
        model_fingerprint=like.model_fingerprint, dense_layout=like.dense_layout,
    )


def same_generation(model, cache: KVCache, by_hand: KVCache, question: torch.Tensor, n: int = 8) -> bool:
    out = kvstack.generate(model, cache, question, max_new_tokens=n)
    return out.numel() == n and torch.equal(out, kvstack.generate(model, by_hand, question, max_new_tokens=n))


def make_ref():
    """The tiny GQA Llama, context and question that ``test_select``'s ``ref`` fixture uses."""
    from test_select import Ref, context, tiny_llama

    gen = torch.Generator().manual_seed(1)
    return Ref(tiny_llama(), context(1), torch.randint(0, 128, (6,), generator=gen))
