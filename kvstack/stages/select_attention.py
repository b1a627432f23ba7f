"""Selection by attention: Q2C, SnapKV, TOVA and Expected Attention (H2O: :mod:`.select_h2o`).

Each scores a KV head's rows from the queries of its group (query heads ``h*g..h*g+g-1``)
against the keys as stored in the layer; the base class does budgets and eviction.
"""

from __future__ import annotations

import torch

from kvstack.errors import RecipeError
from kvstack.stack import (
    NEED_QUESTION_QUERIES,
    NEED_WINDOW_QUERIES,
    Param,
    StageContext,
    as_bool,
    register,
)
from kvstack.stages.select_base import COMMON, FRACTION, ScoredSelect, check_choice
from kvstack.stages.select_scores import (
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
class Q2C(ScoredSelect):
    """Query-to-context: the attention the question's queries (at their real positions, right
    after the context) give each context token, softmax over the cached context per query,
    summed over question tokens and folded over the group by ``agg``."""

    name = "q2c"
    summary = "Q2C: keep the tokens the question attends to most (query-aware; needs question_ids)"
    params = (FRACTION, Param("agg", str, "sum", "fold a KV head's query heads by sum or max"), *COMMON)
    needs = frozenset({NEED_QUESTION_QUERIES})
    needs_question = True

    def check_params(self) -> None:
        check_choice(self.name, "agg", self.agg, ("sum", "max"))

    def score(self, index: int, rows: LayerRows, ctx: StageContext, context_length: int) -> torch.Tensor:
        q = ctx.captures[NEED_QUESTION_QUERIES][index]
        pos = torch.arange(context_length, context_length + q.shape[1])
        att = attention_received(q, pos, rows, **_params(ctx, index, q))
        return group_reduce(att, rows.num_heads, self.agg)


@register
class SnapKV(ScoredSelect):
    """SnapKV (Li et al. 2024): attention of the last ``window`` context queries, summed over the
    window, pooled along the tokens before the window (1-D ``pool`` of ``kernel``), averaged
    over the query group (a sum: same ranking). The window's own tokens are always kept,
    inside the budget, as SnapKV's ``max_capacity_prompt`` includes them."""

    name = "snapkv"
    summary = "SnapKV: keep what the last `window` queries attend to (pooled), plus the window itself"
    params = (
        FRACTION,
        Param("window", int, 32, "observation window: last context queries that vote, kept themselves"),
        Param("kernel", int, 7, "odd width of the pooling along tokens (1 = no pooling)"),
        Param("pool", str, "max", "pooling: max or avg"),
        *COMMON,
    )
    needs = frozenset({NEED_WINDOW_QUERIES})

    def check_params(self) -> None:
        if self.window < 1:
            raise RecipeError(f"snapkv: window={self.window} must be >= 1 (SnapKV uses 32)")
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise RecipeError(f"snapkv: kernel={self.kernel} must be an odd width >= 1 (SnapKV uses 7 or 5)")
        check_choice(self.name, "pool", self.pool, ("max", "avg"))

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
class TOVA(ScoredSelect):
    """TOVA (Oren et al. 2024): the attention of the last context token's query, once at the end
    of prefill (TOVA proper evicts one token per decoding step, not done here). The paper
    averages over all heads of a layer; kvstack scores per KV head (its group summed) so
    per-head budgets apply."""

    name = "tova"
    summary = "TOVA: keep the tokens the last context token attends to most"
    needs = frozenset({NEED_WINDOW_QUERIES})
    window = 1  # read by kvstack.compress: capture the last query only

    def score(self, index: int, rows: LayerRows, ctx: StageContext, context_length: int) -> torch.Tensor:
        q = _window(ctx, index, 1)
        att = attention_received(q, torch.tensor([context_length - 1]), rows, **_params(ctx, index, q))
        return group_reduce(att, rows.num_heads)


@register
class ExpectedAttention(ScoredSelect):
    """Expected Attention (Devoto et al. 2025, kvpress): model future queries as Gaussian with the
    mean ``mu`` (and covariance ``Sigma``, population estimate) of the last ``window`` context
    queries, and score each key by the expected unnormalized attention
    ``E[exp(q.k/sqrt(d))] = exp(mu.k/sqrt(d) + k^T Sigma k / (2d))``, summed over the group.

    Approximations: the statistics are of the window queries as captured, post-RoPE at the
    window's positions - they are not re-rotated to future positions (kvpress averages the
    rotation over the next positions); scores are kept in log space (logsumexp over the
    group); ``vnorm`` multiplies by the value norm as kvpress does by default (off here).
    """

    name = "expected"
    summary = "Expected Attention: keep keys with the most attention expected from future queries"
    params = (
        FRACTION,
        Param("window", int, 32, "last context queries whose statistics stand for future queries"),
        Param("cov", as_bool, True, "use the queries' covariance (else the mean only)"),
        Param("vnorm", as_bool, False, "multiply scores by the value norm (kvpress default)"),
        *COMMON,
    )
    needs = frozenset({NEED_WINDOW_QUERIES})
    log_scores = True

    def check_params(self) -> None:
        if self.window < 1:
            raise RecipeError(f"expected: window={self.window} must be >= 1 (e.g. 32)")

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
