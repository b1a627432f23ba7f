"""Plain PyTorch versions of what the kernels compute: the ground truth and the CPU fallback.

Dequantization follows :class:`~kvstack.rows.quant.QuantRows` exactly (same code
layout, same scale/zero convention), so a cache quantized by the stages and one
quantized by the kernels read back the same.
"""

from __future__ import annotations

import torch

from kvstack.kernels.layout import PackedRows, Segments
from kvstack.rows.quant import QuantRows


def dequantize(p: PackedRows, segments: Segments | None = None) -> torch.Tensor:
    """Rows as float32 ``[rows, dim]``: :meth:`QuantRows.dequantize` itself; channel-axis rows need ``segments``."""
    lengths = None
    if p.axis == "channel":
        lengths = tuple(segments.lengths.tolist()) if segments is not None else (int(p.codes.shape[0]),)
    rows = QuantRows(p.codes, p.scales, p.zeros, p.bits, p.group, p.axis, p.dim, torch.float32, lengths)
    return rows.dequantize()


def decode_attention(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    segments: Segments,
    tail_k: torch.Tensor | None = None,
    tail_v: torch.Tensor | None = None,
    tail: Segments | None = None,
    scale: float | None = None,
    query_tokens: int = 1,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Attention of ``q [S, M, D]`` (M query rows per segment) over each segment's rows.

    ``keys``/``values`` are dense ``[rows, D]`` (already dequantized); the optional tail is
    a second set of dense rows per segment (the full-precision residual window). Row
    ``g * query_tokens + t`` is new token ``t``: the last ``query_tokens`` rows of the
    tail are those tokens, so token ``t`` sees all rows but the tail rows after itself.
    Computed in ``dtype``.
    """
    S, M, D = q.shape
    scale = D**-0.5 if scale is None else scale
    out = torch.empty(S, M, D, dtype=dtype, device=q.device)
    for s in range(S):
        a, n = int(segments.starts[s]), int(segments.lengths[s])
        k, v = keys[a : a + n], values[a : a + n]
        if tail is not None:
            ta, tn = int(tail.starts[s]), int(tail.lengths[s])
            k = torch.cat([k, tail_k[ta : ta + tn]])
            v = torch.cat([v, tail_v[ta : ta + tn]])
        logits = (q[s].to(dtype) @ k.to(dtype).T) * scale
        if query_tokens > 1:
            t = torch.arange(M, device=q.device) % query_tokens
            hidden = torch.arange(k.shape[0], device=q.device)[None, :] > (k.shape[0] - query_tokens + t)[:, None]
            logits = logits.masked_fill(hidden, float("-inf"))
        out[s] = torch.softmax(logits, dim=-1) @ v.to(dtype)
    return out
