"""Scoring answers: exact match and containment after SQuAD-style normalisation.

Both are per sample in [0, 1]. For ``any`` samples (several acceptable strings) a hit on one
counts; for ``all`` samples (every string required) containment is the share found, and an
exact match needs every string and nothing else.
"""

from __future__ import annotations

import math
import re
import string

from kvstack.eval.tasks.base import ALL, ANY

_PUNCT = str.maketrans({c: " " for c in string.punctuation + "\u2018\u2019\u201c\u201d\u2013\u2014"})
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize(text: str) -> str:
    """Lower case, punctuation to spaces, drop articles, collapse spaces (SQuAD's normaliser)."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCT))
    return " ".join(text.split())


def _contains(haystack: str, needle: str) -> bool:
    return bool(needle) and f" {needle} " in f" {haystack} "


def score(prediction: str, answers: tuple[str, ...] | list[str], mode: str = ANY) -> tuple[float, float]:
    """``(exact, contains)`` of one prediction against its answers."""
    pred = normalize(prediction)
    golds = [normalize(a) for a in answers]
    if not golds:
        return 0.0, 0.0
    if mode == ALL:
        found = [g for g in golds if _contains(pred, g)]
        contains = len(found) / len(golds)
        rest = pred
        for g in golds:
            rest = f" {rest} ".replace(f" {g} ", " ").strip()
        leftover = {w for w in rest.split() if w not in {"and"}}
        return float(contains == 1.0 and not leftover), contains
    exact = float(any(pred == g for g in golds))
    contains = float(any(_contains(pred, g) for g in golds))
    return exact, contains


def f1(prediction: str, answers: tuple[str, ...] | list[str]) -> float:
    """SQuAD token F1 against the best-matching answer (partial credit for a weak model's long answers)."""
    from collections import Counter

    pred = normalize(prediction).split()
    best = 0.0
    for gold in answers:
        g = normalize(gold).split()
        common = sum((Counter(pred) & Counter(g)).values())
        if common:
            precision, recall = common / len(pred), common / len(g)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def perplexity(nll_sum: float, tokens: int) -> float:
    """exp of the mean negative log-likelihood per token (nats)."""
    return math.exp(nll_sum / tokens) if tokens else float("nan")
