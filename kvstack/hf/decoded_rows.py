"""Decode each compressed segment once per scope instead of at every step (accuracy runs).

A :class:`~kvstack.hf.cache.CompressedLayer` on the generic path decodes its packed rows at
every step, so the cache never holds its dense copy: that is the point of a compressed cache.
An accuracy sweep (``kvstack eval``) decodes a few tokens from thousands of caches and measures
what the model answers, not memory; there, decoding each segment once and reusing the rows is
faster (the per-step unpack, zero/scale and inverse rotation of every layer dominate a small
model's decode on a GPU) and gives bit-identical tokens, since decoding is deterministic.
Inside :func:`reuse_decoded_rows` the dense rows *are* held for the scope's lifetime; bytes are
still reported from the compressed cache, which is what a user's run holds.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch

from kvstack.kv import KVLayer

Padded = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
# id(segment) -> (segment, its padded rows); the segment is kept so its id cannot be reused while memoized
_MEMO: contextvars.ContextVar[dict[int, tuple[KVLayer, Padded]] | None] = contextvars.ContextVar(
    "kvstack_decoded_rows", default=None)


@contextlib.contextmanager
def reuse_decoded_rows() -> Iterator[None]:
    """Within the block, every compressed segment is decoded at most once (see the module docstring)."""
    token = _MEMO.set({})
    try:
        yield
    finally:
        _MEMO.reset(token)


def padded_rows(segment: KVLayer) -> Padded:
    """``segment.padded()``, from the scope's memo when :func:`reuse_decoded_rows` is active. Segments are
    immutable (dropping rows makes a new one), so the identity of the object is a sound key."""
    memo = _MEMO.get()
    if memo is None:
        return segment.padded()
    hit = memo.get(id(segment))
    if hit is None or hit[0] is not segment:
        hit = memo[id(segment)] = (segment, segment.padded())
    return hit[1]
