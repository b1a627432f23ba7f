"""Rows per KV head: counts after a selection, untouched positions, and whether heads hold the same tokens.

Shared by the low-rank, cross-layer and quantization stages, whose encodings keep rows
head-major with a length per head (``KVLayer.lengths``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kvstack.errors import InputError
from kvstack.kv import KVLayer
from kvstack.rows.groups import segment_ids


def head_counts(segments: Sequence[int], rows: torch.Tensor) -> tuple[int, ...]:
    """Rows per head after keeping ``rows`` (head-major), zero-row heads included."""
    heads = segment_ids(segments, device=rows.device)[rows]
    if heads.numel() > 1 and bool((heads[1:] < heads[:-1]).any()):
        raise InputError("rows kept from a low-rank encoding must stay head-major (sorted by head)")
    return tuple(int(c) for c in torch.bincount(heads, minlength=len(segments)))


def segment_aranges(segments: Sequence[int]) -> torch.Tensor:
    """``0..n_h-1`` for every head, back to back: the positions of rows nobody evicted."""
    return torch.cat([torch.arange(n) for n in segments]) if segments else torch.empty(0, dtype=torch.long)


def same_tokens_every_head(layer: KVLayer) -> bool:
    """True when every head holds the same positions in the same order (one row per token per head)."""
    if not layer.uniform:
        return False
    pos = layer.row_positions().view(layer.num_heads, -1)
    return bool((pos == pos[:1]).all())
