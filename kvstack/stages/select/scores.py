"""Scoring helpers shared by the selection stages.

Every selection method turns one layer into a score per (KV head, row): higher means keep.
Scores live in the *padded* layout of :meth:`KVLayer.padded` - ``[H_kv, Lmax]``, where
column ``j`` of head ``h`` is row ``j`` of that head and columns past ``lengths[h]`` are
padding (``valid`` False) - so ragged layers (after an earlier eviction) score the same
way as fresh ones, and a column index is directly the index :meth:`KVLayer.select_rows`
wants.

Query-based scores use the keys as stored in the layer (decoded, post-RoPE), the model's
own score scaling and logit softcap (captured at prefill; ``head_dim ** -0.5`` if unknown),
and a causal / sliding-window mask from the rows' true positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kvstack.grammar.needs import ATTN_PARAMS
from kvstack.kv import KVLayer


class LayerRows:
    """Where one layer's rows came from, padded like :meth:`KVLayer.padded` (column j of head h
    is row j of that head); keys and values are decoded only when a score needs them."""

    def __init__(self, layer: KVLayer) -> None:
        self.layer = layer
        self.window = layer.sliding_window
        lengths = torch.tensor(layer.lengths, dtype=torch.long)
        lmax = layer.max_length
        self.valid = torch.arange(lmax)[None, :] < lengths[:, None]
        self.pos = torch.zeros(layer.num_heads, lmax, dtype=torch.long)
        self.pos[self.valid] = layer.row_positions()
        self._kv: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def num_heads(self) -> int:
        return self.layer.num_heads

    @property
    def counts(self) -> list[int]:
        return list(self.layer.lengths)

    def _decoded(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._kv is None:
            k, v, _, _ = self.layer.padded()
            self._kv = (k.float(), v.float())
        return self._kv

    @property
    def keys(self) -> torch.Tensor:
        """``[H, Lmax, D]`` float32 (zeros on padding)."""
        return self._decoded()[0]

    @property
    def values(self) -> torch.Tensor:
        return self._decoded()[1]


def group_reduce(x: torch.Tensor, num_kv_heads: int, agg: str = "sum") -> torch.Tensor:
    """Fold query heads ``[Hq, ...]`` into their KV heads ``[Hkv, ...]`` (heads ``h*g..h*g+g-1`` -> ``h``)."""
    g = x.shape[0] // num_kv_heads
    x = x.reshape(num_kv_heads, g, *x.shape[1:])
    if agg == "max":
        return x.amax(dim=1)
    return x.sum(dim=1)


def score_params(ctx, index: int, head_dim: int) -> tuple[float, float | None]:
    """The model's own (scaling, softcap) for layer ``index`` as captured at prefill
    (Gemma 2 scales by ``query_pre_attn_scalar`` and soft-caps); ``head_dim**-0.5`` otherwise."""
    scaling, softcap = ctx.captures.get(ATTN_PARAMS, {}).get(index, (None, None))
    return (scaling if scaling is not None else head_dim**-0.5), softcap


def attention_received(
    queries: torch.Tensor,
    query_pos: torch.Tensor,
    rows: LayerRows,
    block: int = 1 << 25,
    scaling: float | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Attention ``[Hq, L]`` each row gets from post-RoPE ``queries [Hq, n, D]``, summed over the queries.

    Per query: a softmax over the rows it may see (at or before its position, within the
    sliding window), i.e. over the cached context. Padding and masked rows get 0; a query
    that sees no row contributes nothing. Queries go in chunks of about ``block`` logits,
    and keys are shared by their query group (no per-query-head copy).
    """
    hq, n, d = queries.shape
    hk, length = rows.num_heads, rows.valid.shape[1]
    keys = rows.keys
    dev = keys.device
    from kvstack import kernels

    if not softcap and kernels.uses_kernels(dev, d, attention=True) and (hq // hk) * n > 0:
        from kvstack.kernels.triton_scores import attention_received as received_kernel

        # fp16 operands, fp32 accumulation (what the model's own attention does on a GPU): exact
        # float32 products in Triton run 80x slower than this (benchmarks/RESULTS.md)
        half = torch.float16
        return received_kernel(queries.to(dev, half), query_pos, keys.to(half), rows.pos, rows.valid,
                               scaling or d**-0.5, rows.window)
    q = queries.float().to(dev).reshape(hk, hq // hk, n, d)
    kp = rows.pos.to(dev).unsqueeze(1)  # [Hk, 1, L]
    valid = rows.valid.to(dev).unsqueeze(1)
    qpos = query_pos.to(dev)
    out = torch.zeros(hk, hq // hk, length, device=dev)
    step = max(1, block // max(hq * length, 1))
    for a in range(0, n, step):
        b = min(a + step, n)
        logits = torch.einsum("hgqd,hsd->hgqs", q[:, :, a:b], keys) * (scaling or d**-0.5)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        qp = qpos[a:b].view(1, -1, 1)
        ok = valid & (kp <= qp)  # [Hk, chunk, L]
        if rows.window is not None:
            ok &= (qp - kp) < rows.window
        logits = logits.masked_fill(~ok.unsqueeze(1), float("-inf"))
        out += torch.softmax(logits, dim=-1).nan_to_num(0.0).sum(dim=2)
    return out.reshape(hq, length)


def at_positions(per_token: torch.Tensor, rows: LayerRows) -> torch.Tensor:
    """Pick per-token statistics ``[Hq, T]`` at each row's position: ``[Hq, L]`` (0 on padding)."""
    g = per_token.shape[0] // rows.num_heads
    idx = rows.pos.clamp(0, per_token.shape[1] - 1).repeat_interleave(g, dim=0).to(per_token.device)
    out = per_token.float().gather(1, idx)
    return out.masked_fill(~rows.valid.repeat_interleave(g, dim=0).to(out.device), 0.0)


def pool1d(scores: torch.Tensor, candidates: torch.Tensor, kernel: int, kind: str) -> torch.Tensor:
    """SnapKV's 1-D pooling along rows (stride 1, ``kernel // 2`` padding), per head.

    Only ``candidates`` [rows of ``scores``' shape] take part, as SnapKV pools only the
    prefix before its observation window: max pooling ignores the others, average pooling
    counts them (and the padding) as zeros, like ``avg_pool1d(count_include_pad=True)``.
    ``kernel`` must be odd (stages validate it) so rows stay aligned.
    """
    if kernel <= 1:
        return scores
    pad = kernel // 2
    candidates = candidates.to(scores.device)
    if kind == "max":
        x = scores.masked_fill(~candidates, float("-inf"))
        return F.max_pool1d(x.unsqueeze(1), kernel, stride=1, padding=pad).squeeze(1)
    x = scores.masked_fill(~candidates, 0.0)
    return F.avg_pool1d(x.unsqueeze(1), kernel, stride=1, padding=pad, count_include_pad=True).squeeze(1)


def newest_rows(rows: LayerRows, counts: list[int]) -> torch.Tensor:
    """Mask ``[H, L]`` of the ``counts[h]`` rows with the highest positions in each head."""
    order = torch.argsort(rows.pos.masked_fill(~rows.valid, -1), dim=1, descending=True, stable=True)
    mask = torch.zeros_like(rows.valid)
    for h, n in enumerate(counts):
        mask[h, order[h, :n]] = True
    return mask & rows.valid


def rank(scores: torch.Tensor) -> torch.Tensor:
    """Indices of ``scores`` (1-D) best first; ties go to the lower index (the earlier row)."""
    return torch.sort(scores, descending=True, stable=True).indices


def normalize(scores: torch.Tensor, free: torch.Tensor, log_scores: bool) -> torch.Tensor:
    """Per-head distribution over the free rows (Ada-KV compares heads on these); -inf elsewhere.

    Attention-mass scores (non-negative) are divided by their head's sum; other scores
    (log-domain or signed, e.g. negated norms) go through a softmax over the head's rows.
    """
    s = scores.float().masked_fill(~free, float("-inf"))
    if log_scores or bool((scores[free] < 0).any()):
        out = torch.softmax(s, dim=1).nan_to_num(0.0)
    else:
        mass = scores.float().masked_fill(~free, 0.0)
        out = mass / mass.sum(dim=1, keepdim=True).clamp_min(1e-30)
    return out.masked_fill(~free, float("-inf"))
