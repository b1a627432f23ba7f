"""The rule a quantizer applies to an encoding that holds inner rows (low-rank coefficients).

An encoding such as ``LowRankRows`` says ``has_inner_rows`` and exposes the rows it really
stores (``r`` coefficients per row) with ``inner_rows``/``with_inner``; quantizing those, not
the reconstruction (``head_dim`` per row), is what makes ``svd:rank=16 > int4`` store 16
codes per row. Kept here, beside neither family, so ``quant`` does not reach into ``lowrank``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from kvstack.kv import Encoded


def quantize_encoded(
    rows: Encoded, lengths: Sequence[int], quantize: Callable[[torch.Tensor, Sequence[int]], Encoded]
) -> Encoded:
    """``quantize(rows, rows_per_head)`` of the inner coefficients when ``rows`` has them, else of the rows.

    The rule a quantization stage applies so that ``svd:rank=16 > int4:axis=channel`` stores
    4-bit coefficients (16 per row) rather than 4-bit reconstructions (head_dim per row).
    """
    if getattr(rows, "has_inner_rows", False):
        inner, per_head = rows.inner_rows()
        return rows.with_inner(quantize(inner, per_head))
    return quantize(rows.decode(), lengths)
