"""Sizing a RULER prompt to a length budget.

RULER counts a length as the whole sequence: instructions, haystack, question, answer prefix
and the tokens to generate must fit in it, so an "8k" sample runs on an 8k-context model. The
haystack is the free variable: :func:`fit_units` searches the largest number of haystack units
(sentences, words, list items) whose prompt stays within the budget.
"""

from __future__ import annotations

from collections.abc import Callable

from kvstack.eval.tasks.base import count_tokens

CHAT_SLACK = 48  # tokens a chat template adds (system prompt, turn markers, assistant header)


def budget(tokenizer, length: int, question: str, prefix: str, max_new_tokens: int) -> int:
    """Tokens left for the context once the question, the answer prefix and the answer fit."""
    fixed = count_tokens(tokenizer, question) + count_tokens(tokenizer, prefix) + max_new_tokens + CHAT_SLACK
    return max(length - fixed, 16)


def fit_units(tokenizer, target: int, build: Callable[[int], str], first_guess: int,
              most: int | None = None) -> tuple[int, str]:
    """Largest ``n`` (at most ``most`` units: a finite pool) with ``count_tokens(build(n)) <= target``
    (``build`` grows with ``n``)."""
    cap = most if most is not None else 1 << 40
    n = min(max(first_guess, 1), cap)
    for _ in range(3):  # proportional steps land close; the bisection below makes it exact
        used = count_tokens(tokenizer, build(n))
        n = min(max(int(n * target / max(used, 1)), 1), cap)
    lo, hi = 0, n
    while count_tokens(tokenizer, build(hi)) <= target:
        if hi >= cap:  # the whole pool fits: nothing larger to try
            return hi, build(hi)
        lo, hi = hi, min(hi * 2, cap)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if count_tokens(tokenizer, build(mid)) <= target:
            lo = mid
        else:
            hi = mid
    n = max(lo, 1)
    return n, build(n)
