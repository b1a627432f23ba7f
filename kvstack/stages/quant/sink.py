"""The attention-sink rows (positions below ``sink``) kept in fp16 beside a quantized encoding of the rest.

The first token draws a large share of the attention and its keys/values are unlike every
other row, so KVQuant keeps it in fp16. Rows are split by position (head-major order kept);
the sink rows are stored as ``float16`` when the model's dtype is wider and they fit (else in
the model's dtype), in a :class:`~kvstack.stages.common.keep.KeptRows` with the rest.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from kvstack.kv import DenseRows, Encoded, KVLayer
from kvstack.stages.common.keep import KeptRows, per_head_counts, runs_of
from kvstack.stages.quant.sparse import FP16_MAX


def keep_sink(
    rows: torch.Tensor,
    layer: KVLayer,
    sink: int,
    encode: Callable[[torch.Tensor, torch.Tensor, tuple[int, ...]], Encoded],
) -> Encoded:
    """``encode(rows, positions, rows_per_head)`` of the rows at positions ``>= sink``; the others kept."""
    pos = layer.row_positions()
    exact = pos < sink
    inner = encode(rows[~exact], pos[~exact], per_head_counts(layer.lengths, exact))
    if not bool(exact.any()):
        return inner
    kept = rows[exact]
    if kept.element_size() > 2 and bool(torch.isfinite(kept).all()) and float(kept.abs().max()) <= FP16_MAX:
        kept = kept.to(torch.float16)
    return KeptRows(inner, DenseRows(kept.contiguous()), runs_of(exact))
