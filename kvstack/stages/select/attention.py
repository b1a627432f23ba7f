"""Selection by attention: Q2C, SnapKV, TOVA and Expected Attention (H2O: :mod:`.h2o`).

Each scores a KV head's rows from the queries of its group (query heads ``h*g..h*g+g-1``)
against the keys as stored in the layer; the base class does budgets and eviction.
"""

from __future__ import annotations

import torch

from kvstack.grammar.needs import NEED_QUESTION_QUERIES, NEED_WINDOW_QUERIES
from kvstack.registry import StageContext, register
from kvstack.stages.select.base import ScoredSelect
from kvstack.stages.select.scores import (
    LayerRows,
    attention_received,
    group_reduce,
    pool1d,
    score_params,
)


def _params(ctx: StageContext, index: int, q: torch.Tensor) -> dict:
    scaling, softcap = score_params(ctx, index, q.shape[-1])
    return {"scaling": scaling, "softcap": softcap}


def _window(ctx: StageContext, index: int, n: int) -> torch.Tensor:
    """The last ``n`` captured context queries of a layer, ``[Hq, n, D]``."""
    return ctx.captures[NEED_WINDOW_QUERIES][index][:, -n:].float()


@register
class Q2C(ScoredSelect, grammar="q2c"):
    """Query-to-context: the attention the question's queries (at their real positions, right
    after the context) give each context token, softmax over the cached context per query,
    summed over question tokens and folded over the group by ``agg``."""

    needs = frozenset({NEED_QUESTION_QUERIES})
    needs_question = True

    def score(self, index: int, rows: LayerRows, ctx: StageContext, context_length: int) -> torch.Tensor:
        q = ctx.captures[NEED_QUESTION_QUERIES][index]
        pos = torch.arange(context_length, context_length + q.shape[1])
        att = attention_received(q, pos, rows, **_params(ctx, index, q))
        return group_reduce(att, rows.num_heads, self.agg)


@register
class SnapKV(ScoredSelect, grammar="snapkv"):
    """SnapKV (Li et al. 2024): attention of the last ``window`` context queries, summed over the
    window, pooled along the tokens before the window (1-D ``pool`` of ``kernel``), averaged
    over the query group (a sum: same ranking). The window's own tokens are always kept,
    inside the budget, as SnapKV's ``max_capacity_prompt`` includes them."""

    needs = frozenset({NEED_WINDOW_QUERIES})

    def must_keep(self, rows: LayerRows, requests: list[int], context_length: int) -> torch.Tensor:
        return rows.pos >= context_length - self.window

    def must_keep_text(self) -> str:
        return f"sink={self.sink} plus the window={self.window} observed tokens"

    def score(self, index: int, rows: LayerRows, ctx: StageContext, context_length: int) -> torch.Tensor:
        q = _window(ctx, index, self.window)
        n = q.shape[1]
        att = attention_received(q, torch.arange(context_length - n, context_length), rows, **_params(ctx, index, q))
        g = att.shape[0] // rows.num_heads
        prefix = (rows.valid & (rows.pos < context_length - self.window)).repeat_interleave(g, dim=0)
        return group_reduce(pool1d(att, prefix, self.kernel, self.pool), rows.num_heads)


@register
class TOVA(ScoredSelect, grammar="tova"):
    """TOVA (Oren et al. 2024): the attention of the last context token's query, once at the end
    of prefill (TOVA proper evicts one token per decoding step, not done here). The paper
    averages over all heads of a layer; kvstack scores per KV head (its group summed) so
    per-head budgets apply."""

    needs = frozenset({NEED_WINDOW_QUERIES})
    window = 1  # read by kvstack.compress: capture the last query only

    def score(self, index: int, rows: LayerRows, ctx: StageContext, context_length: int) -> torch.Tensor:
        q = _window(ctx, index, 1)
        att = attention_received(q, torch.tensor([context_length - 1]), rows, **_params(ctx, index, q))
        return group_reduce(att, rows.num_heads)


@register
class ExpectedAttention(ScoredSelect, grammar="expected"):
    """Expected Attention (Devoto et al. 2025, kvpress): model future queries as Gaussian with the
    mean ``mu`` (and covariance ``Sigma``, population estimate) of the last ``window`` context
    queries, and score each key by the expected unnormalized attention
    ``E[exp(q.k/sqrt(d))] = exp(mu.k/sqrt(d) + k^T Sigma k / (2d))``, summed over the group.

    Approximations: the statistics are of the window queries as captured, post-RoPE at the
    window's positions - they are not re-rotated to future positions (kvpress averages the
    rotation over the next positions); scores are kept in log space (logsumexp over the
    group); ``vnorm`` multiplies by the value norm as kvpress does by default (off here).
    """

    needs = frozenset({NEED_WINDOW_QUERIES})
    log_scores = True

    def score(self, index: int, rows: LayerRows, ctx: StageContext, context_length: int) -> torch.Tensor:
        keys = rows.keys  # [Hkv, L, D], shared by the query group
        q = _window(ctx, index, self.window).to(keys.device)
        hq, n, d = q.shape
        q = q.reshape(rows.num_heads, hq // rows.num_heads, n, d)
        mu = q.mean(dim=2)  # [Hkv, g, D]
        scaling, _ = score_params(ctx, index, d)
        logit = torch.einsum("hgd,hld->hgl", mu, keys) * scaling
        if self.cov and n > 1:
            c = q - mu.unsqueeze(2)
            sigma = torch.einsum("hgnd,hgne->hgde", c, c) / n
            logit = logit + ((keys.unsqueeze(1) @ sigma) * keys.unsqueeze(1)).sum(dim=-1) / (2 * d)
        out = torch.logsumexp(logit, dim=1)  # log of the expected attention summed over the group
        if self.vnorm:
            out = out + rows.values.norm(dim=-1).clamp_min(1e-30).log()
        return out
