"""Identities a cache is checked and addressed by: its token prefix and its tokenizer."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch


def prefix_hash(ids) -> str:
    """SHA-256 (hex) of token ids as little-endian uint32: the content address of a context.

    Two agents that tokenized the same prefix get the same hash, whatever tensor type held it.
    Hashed in blocks of ``_BLOCK`` ids, so a server checking a 50M-token upload holds one
    block widened to int64, not the whole context (that was ~6x the ids' memory).
    """
    flat = torch.as_tensor(ids).reshape(-1)
    h = hashlib.sha256()
    for start in range(0, flat.numel(), _BLOCK):
        part = flat[start : start + _BLOCK].to(torch.int64).cpu().numpy()
        h.update(np.asarray(part).astype("<u4").tobytes())
    return h.hexdigest()


_BLOCK = 1 << 20


def tokenizer_hash(tokenizer) -> str:
    """SHA-256 (hex, 16 chars) of a tokenizer's vocabulary and special tokens.

    Runtime settings (padding side, truncation) are left out: they do not change which ids a
    text becomes, so they must not make a cache look foreign.
    """
    vocab = tokenizer.get_vocab()
    special = getattr(tokenizer, "all_special_tokens", [])
    text = json.dumps([sorted(vocab.items()), sorted(map(str, special))], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
