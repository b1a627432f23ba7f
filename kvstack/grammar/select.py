"""Declarations of the selection stages: which tokens a cache keeps (family ``select``).

Implementations, in :mod:`kvstack.stages.select`: ``streaming``, ``attention`` (q2c, snapkv,
tova, expected), ``h2o``, ``keys`` (knorm, keydiff, random), ``kvzip``, ``surprisal``,
``critical``, ``merge`` and ``fastgen``. Sizes: :mod:`kvstack.grammar.sizes`.
"""

from __future__ import annotations

import math
from typing import Any

from kvstack.errors import BudgetError, RecipeError
from kvstack.grammar import sizes
from kvstack.grammar.params import (
    Param,
    as_bool,
    check_choice,
    check_share_or_count,
    parse_ids,
    parse_stride,
)
from kvstack.grammar.spec import StageSpec, checks

ALLOCS = ("uniform", "pyramid", "adakv")
DEFAULT_STRIDE = 32  # h2o: score every 32nd context query unless told otherwise
MIN_NLL_WINDOW = 8  # surprisal: the shortest context a windowed prediction may use (shorter is noise)
# Score-and-keep methods a based stage (critical, merge) can take its scores from.
SCORED = ("q2c", "snapkv", "tova", "expected", "h2o", "knorm", "keydiff", "random", "kvzip", "surprisal")

FRACTION = Param("fraction", float, 0.5, "share of each head's tokens to keep, in (0, 1]")
COMMON = (
    Param("sink", int, 0, "first tokens always kept, counted inside the budget"),
    Param("alloc", str, "uniform", "budget split: uniform | pyramid (PyramidKV) | adakv (Ada-KV)"),
    Param("beta", float, 20.0, "pyramid: the deepest layer gets 1/beta of the mean budget (1 = uniform)"),
    Param("span", int, 0, "keep the N tokens after each well-scored token with it (0 = off)"),
)
BASE = Param("base", str, "expected", "method whose scores are refined: expected, snapkv, q2c, tova, h2o, ...")


def check_scored(s: Any) -> None:
    """What every score-and-keep stage checks: the budget and the common options."""
    if not (0.0 < s.fraction <= 1.0) or math.isnan(s.fraction):
        raise BudgetError(
            f"{s.name}: fraction={s.fraction} must be in (0, 1]: it is the share of tokens kept "
            f"(e.g. {s.name}:0.25 keeps a quarter; 1 keeps everything)"
        )
    if s.sink < 0:
        raise BudgetError(f"{s.name}: sink={s.sink} must be >= 0 (a number of initial tokens to keep)")
    check_choice(s.name, "alloc", s.alloc, ALLOCS)
    if s.span < 0:
        raise RecipeError(f"{s.name}: span={s.span} must be >= 0 (tokens kept after each kept token; 0 = off)")
    if not s.beta >= 1.0:
        raise RecipeError(f"{s.name}: beta={s.beta} must be >= 1 (PyramidKV uses 20; 1 is uniform)")


def _check_q2c(s: Any) -> None:
    check_choice(s.name, "agg", s.agg, ("sum", "max"))


def _check_surprisal(s: Any) -> None:
    if s.window < 0 or 0 < s.window < MIN_NLL_WINDOW:
        raise RecipeError(
            f"surprisal: window={s.window} must be 0 (surprisal under the whole context) or at least "
            f"{MIN_NLL_WINDOW} tokens (each token is predicted from the N tokens before it; 128 is a good start)"
        )
    check_choice(s.name, "agg", s.agg, ("max", "mean"))
    if not s.clip >= 0.0:
        raise RecipeError(f"surprisal: clip={s.clip} must be >= 0 nats (0 = off; 6 is a good start)")
    if s.back < 0:
        raise RecipeError(f"surprisal: back={s.back} must be >= 0 (tokens kept before each kept token; 0 = off)")


def _check_snapkv(s: Any) -> None:
    if s.window < 1:
        raise RecipeError(f"snapkv: window={s.window} must be >= 1 (SnapKV uses 32)")
    if s.kernel < 1 or s.kernel % 2 == 0:
        raise RecipeError(f"snapkv: kernel={s.kernel} must be an odd width >= 1 (SnapKV uses 7 or 5)")
    check_choice(s.name, "pool", s.pool, ("max", "avg"))


def _check_expected(s: Any) -> None:
    if s.window < 1:
        raise RecipeError(f"expected: window={s.window} must be >= 1 (e.g. 32)")


def _check_h2o(s: Any) -> None:
    if s.recent < 0 or (s.recent >= 1 and s.recent != int(s.recent)):
        raise RecipeError(
            f"h2o: recent={s.recent} must be a share of the budget in [0, 1) or a whole count >= 1 "
            "(H2O splits the budget half and half: recent=0.5)"
        )


def _check_base(s: Any) -> None:
    if s.base not in SCORED:
        raise RecipeError(
            f"{s.name}: base={s.base!r} is not a score-and-keep method; use one of {', '.join(sorted(SCORED))}"
        )


def _check_critical(s: Any) -> None:
    if not 0.0 <= s.first <= 1.0 or math.isnan(s.first):
        raise RecipeError(f"critical: first={s.first} must be in [0, 1] (kvpress uses 0.5)")
    if not s.eps >= 0.0:
        raise RecipeError(f"critical: eps={s.eps} must be >= 0 (kvpress uses 1e-4)")


def _check_streaming(s: Any) -> None:
    if s.window < 0 or s.sink < 0:
        raise BudgetError(
            f"streaming: window={s.window} and sink={s.sink} must be >= 0 (they count tokens to keep)"
        )
    if s.window + s.sink == 0:
        raise BudgetError("streaming: window=0 and sink=0 keep no tokens; give a window of at least 1")


def _check_fastgen(s: Any) -> None:
    if not 0.0 < s.threshold <= 1.0 or math.isnan(s.threshold):
        raise BudgetError(
            f"fastgen: threshold={s.threshold} must be in (0, 1]: the share of attention each head "
            "must recover (FastGen uses 0.9-0.99; 1 keeps everything a head attends to)"
        )
    if s.window < 1:
        raise RecipeError(f"fastgen: window={s.window} must be >= 1 (e.g. 32 last context queries)")
    for key in ("local", "freq"):
        check_share_or_count("fastgen", key, getattr(s, key), "FastGen uses 0.3")
    if s.sink < 0:
        raise BudgetError(f"fastgen: sink={s.sink} must be >= 0 (initial tokens kept as special)")


def _scored(name: str, summary: str, *own: Param, check=None) -> StageSpec:
    """A score-and-keep stage: ``fraction`` first, its own options, then the common ones."""
    parts = (check_scored, check) if check else (check_scored,)
    return StageSpec(name, "select", summary, (FRACTION, *own, *COMMON), check=checks(*parts), size=sizes.keep_fraction)


SPECS: tuple[StageSpec, ...] = (
    StageSpec(
        "streaming", "select", "StreamingLLM: keep the first `sink` tokens and the last `window` tokens",
        (
            Param("window", int, 512, "recent tokens kept"),
            Param("sink", int, 4, "initial tokens kept as attention sinks"),
            Param("decode", as_bool, False, "also hold the budget while generating (evict as tokens arrive)"),
        ),
        check=_check_streaming, size=sizes.streaming,
    ),
    _scored("q2c", "Q2C: keep the tokens the question attends to most (query-aware; needs question_ids)",
            Param("agg", str, "sum", "fold a KV head's query heads by sum or max"), check=_check_q2c),
    _scored("snapkv", "SnapKV: keep what the last `window` queries attend to (pooled), plus the window itself",
            Param("window", int, 32, "observation window: last context queries that vote, kept themselves"),
            Param("kernel", int, 7, "odd width of the pooling along tokens (1 = no pooling)"),
            Param("pool", str, "max", "pooling: max or avg"), check=_check_snapkv),
    _scored("tova", "TOVA: keep the tokens the last context token attends to most"),
    _scored("expected", "Expected Attention: keep keys with the most attention expected from future queries",
            Param("window", int, 32, "last context queries whose statistics stand for future queries"),
            Param("cov", as_bool, True, "use the queries' covariance (else the mean only)"),
            Param("vnorm", as_bool, False, "multiply scores by the value norm (kvpress default)"),
            check=_check_expected),
    _scored("h2o", "H2O: keep heavy hitters (most cumulative attention) plus recent tokens",
            Param("recent", float, 0.5, "recent tokens kept: a share of each head's budget (<1) or a count (>=1)"),
            Param("stride", parse_stride, DEFAULT_STRIDE,
                  "score every k-th context query (1 = all, exact; k > 1 estimates)"),
            check=_check_h2o),
    _scored("knorm", "K-norm: keep the tokens whose keys have the lowest L2 norm"),
    _scored("keydiff", "KeyDiff: keep the keys least similar (cosine) to the head's mean key"),
    _scored("random", "random baseline: keep a seeded uniform random share of each head's tokens",
            Param("seed", int, 0, "random seed (same seed, same rows)")),
    _scored("kvzip", "KVzip: keep the tokens the model attends to most while reconstructing the context "
            "(extra pass)"),
    _scored("surprisal", "Selective-Context surprisal: keep the tokens the model predicted worst (prefill logits, "
            "no question)",
            Param("window", int, 0, "predict each token from only the N tokens before it (an extra pass; 0 = the "
                  "whole context, the prefill's own logits)"),
            Param("agg", str, "max", "a span's score: max (its best token) or mean (favours runs of surprising "
                  "tokens, e.g. a needle, over lone rare words)"),
            Param("clip", float, 0.0, "cap each token's surprisal at this many nats before agg (0 = off): one "
                  "rare word then cannot carry a span"),
            Param("union", as_bool, False, "rank each token by the better of this score and the same surprisal "
                  "with agg=max and no clip: lone surprising words and surprising runs each get half the budget"),
            Param("back", int, 0, "also keep the N tokens before each well-scored token (0 = off): a needle's "
                  "key comes before its value"),
            check=_check_surprisal),
    StageSpec(
        "critical", "select", "CriticalKV: refine a base score (default expected) by the value's norm through o_proj",
        (
            FRACTION,
            BASE,
            Param("first", float, 0.5, "share of the budget chosen by the base score alone (stage 1)"),
            Param("eps", float, 1e-4, "added to the base distribution before weighting by the value norm"),
            *COMMON,
        ),
        check=checks(check_scored, _check_critical, _check_base), size=sizes.keep_fraction,
    ),
    StageSpec(
        "merge", "select",
        "token merging: keep like `base` (default expected), fold evicted values into the most similar kept key",
        (FRACTION, BASE, *COMMON), check=checks(check_scored, _check_base), size=sizes.keep_fraction,
    ),
    StageSpec(
        "fastgen", "select",
        "FastGen: per KV head, the cheapest of special/local/frequent/full that recovers `threshold` attention",
        (
            Param("threshold", float, 0.9, "share of the window queries' attention each head must keep, in (0, 1]"),
            Param("window", int, 32, "last context queries whose attention is measured"),
            Param("local", float, 0.3, "locality: newest rows kept, a share of the head's rows (<1) or a count"),
            Param("freq", float, 0.3, "frequency: heavy hitters kept, a share (<1) or a count"),
            Param("sink", int, 1, "special tokens: the first `sink` positions (BOS, attention sinks)"),
            Param("punct", parse_ids, (), "punctuation token ids, '/'-separated (e.g. 13/11/30), kept with `special`"),
        ),
        check=_check_fastgen, size=sizes.fastgen,
    ),
)
