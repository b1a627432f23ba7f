"""A kvstack cache's KV as LMCache chunks, and back.

LMCache holds a context's KV in chunks of ``chunk`` tokens, each one tensor
``[2, num_layers, chunk, num_kv_heads * head_dim]`` (keys, values; heads flattened as a serving
engine hands them over). :func:`to_chunks` cuts a kvstack cache that keeps every token into those
chunks - what an engine stores - and :func:`with_chunks` puts reloaded chunks back into such a
cache - what an engine rebuilds on a hit - so kvstack can generate from KV that went through
LMCache. Only full chunks are cut: LMCache does not store a partial last chunk, an engine
recomputes those tokens. Needs only torch (no LMCache).
"""

from __future__ import annotations

import dataclasses

import torch

from kvstack.errors import InputError
from kvstack.kv import DenseRows, KVCache

CHUNK = 256  # LMCache's default chunk size


def _geometry(cache: KVCache) -> tuple[int, int, int]:
    """``(heads, head_dim, tokens)`` of a cache whose every layer and head holds every context token."""
    if not isinstance(cache, KVCache) or not cache.layers:
        raise InputError(f"expected a kvstack.KVCache with layers, not {type(cache).__name__}")
    layer = cache.layers[0]
    heads, dim, tokens = layer.num_heads, int(layer.keys.shape[1]), cache.context_length
    for i, lay in enumerate(cache.layers):
        if set(lay.lengths) != {tokens} or lay.num_heads != heads:
            raise InputError(f"layer {i} of this cache keeps {sorted(set(lay.lengths))} of its {tokens} tokens; "
                             "LMCache chunks hold every token: use a cache that drops none (recipe 'identity' "
                             "or a quantizer)")
    return heads, dim, tokens


def to_chunks(cache: KVCache, chunk: int = CHUNK, dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """The full ``chunk``-token chunks of ``cache``'s KV (decoded, if quantized), each
    ``[2, layers, chunk, heads * head_dim]``, in ``dtype`` (default: the decoded dtype)."""
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        raise InputError(f"chunk={chunk!r} must be a positive number of tokens")
    heads, dim, tokens = _geometry(cache)

    def plane(rows, start):
        return rows.decode().reshape(heads, tokens, dim)[:, start : start + chunk].transpose(0, 1).reshape(chunk, -1)

    out = [torch.stack([torch.stack([plane(getattr(lay, side), s) for lay in cache.layers])
                        for side in ("keys", "values")]) for s in range(0, tokens - chunk + 1, chunk)]
    return out if dtype is None else [c.to(dtype) for c in out]


def with_chunks(cache: KVCache, chunks: list[torch.Tensor]) -> KVCache:
    """``cache`` (of the chunks' tokens, dropping none) holding the KV of ``chunks`` instead, dense,
    in the dtype ``cache`` decodes to; ``cache`` itself is not changed."""
    heads, dim, tokens = _geometry(cache)
    want = (2, len(cache.layers), heads * dim)
    if not chunks or any(c.dim() != 4 or (c.shape[0], c.shape[1], c.shape[3]) != want for c in chunks):
        got = [list(c.shape) for c in chunks]
        raise InputError(f"chunks {got} do not fit this cache: each must be [2, {want[1]}, tokens, {want[2]}]")
    kv = torch.cat(list(chunks), dim=2)
    if kv.shape[2] != tokens:
        raise InputError(f"the chunks hold {kv.shape[2]} tokens and the cache {tokens}; give the cache of the "
                         "chunks' tokens (a partial last chunk is recomputed, not stored)")
    kv = kv.to(cache.layers[0].keys.decode().dtype)

    def rows(x):  # [T, H*D] -> [H*T, D]
        return DenseRows(x.reshape(tokens, heads, dim).transpose(0, 1).reshape(heads * tokens, dim).contiguous())

    layers = [dataclasses.replace(lay, keys=rows(kv[0, i]), values=rows(kv[1, i]))
              for i, lay in enumerate(cache.layers)]
    return dataclasses.replace(cache, layers=layers)
