"""Keys that look alike, for the ``lookalike`` multi-key task.

Why: in the evaluation harness's multi-key test every fact is the same sentence about keys of one
shape ("... filed under 'amber-lantern' reads 4812093.") and only the key tells them apart. The
shipped model answered 13/40 there at 4k, and every wrong answer was the value of another key.
Ordinary training multi-key samples phrase each fact with its own frame and draw each key from a
different family (a person next to a code next to a pseudo-word), so the key's *shape* or the
sentence around it is often enough to find the asked fact. Here the distractors share the target's
family, often one of its parts ("<a>-<b>" next to "<a>-<c>" and "<d>-<b>"), so only matching the
whole key works.

Nothing here comes from the evaluation's vocabulary: words are the training lists, the open
vocabulary of prose words (which excludes every evaluation word), or pseudo-words.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from kvstack.errors import InputError
from training import templates as T

FAMILIES = ("compound", "person", "code", "pseudo", "phrase")
SHARE_P = 0.35  # chance that a distractor keeps the target's first part, and the same for its second part


def _pick(rng: np.random.Generator, items: Sequence):
    return items[int(rng.integers(len(items)))]


def _parts(facts, family: str, heldout: bool) -> tuple[Callable[[], str], Callable[[], str], Callable[[str, str], str]]:
    """Two part generators and how a key is joined from its parts, for one family and one split."""
    rng, book = facts.rng, facts.book
    word = lambda: facts.pseudo_word(1, 2)
    if family == "compound":
        if heldout:
            return word, word, lambda a, b: f"{a}-{b}"
        if book.open_words and rng.random() < 0.5:
            w = lambda: _pick(rng, book.open_words)
            return w, w, lambda a, b: f"{a}-{b}"
        return (lambda: _pick(rng, T.ADJECTIVES)), (lambda: _pick(rng, T.NOUNS)), lambda a, b: f"{a}-{b}"
    if family == "person":
        return (lambda: _pick(rng, book.first)), (lambda: _pick(rng, book.last)), lambda a, b: f"{a} {b}"
    if family == "code":
        prefix = _pick(rng, T.CODE_PREFIXES)  # one prefix for every key of the sample
        letter = lambda: chr(65 + int(rng.integers(26)))
        return letter, (lambda: str(int(rng.integers(10, 1000)))), lambda a, b: f"{prefix} {a}-{b}"
    if family == "pseudo":
        syllable = lambda: _pick(rng, T.SYLLABLES)
        return syllable, (lambda: facts.pseudo_word(1, 2)), lambda a, b: (a + b).title()
    if family == "phrase" and not heldout:
        return (lambda: _pick(rng, T.ADJECTIVES)), (lambda: _pick(rng, T.NOUNS)), lambda a, b: f"the {a} {b}"
    return word, word, lambda a, b: f"{a}-{b}"  # "phrase" has no held-out lists: a pseudo compound instead


def lookalike_keys(facts, n: int, heldout: bool = False, family: str | None = None,
                   quote: bool | None = None) -> list[str]:
    """``n`` distinct keys of one family; the first is the target, the others often share one of its parts.

    ``heldout``: draw only from held-out names and pseudo-words (no training word lists).
    """
    if n < 1:
        raise InputError(f"asked for {n} look-alike keys: ask for at least 1")
    rng = facts.rng
    family = family or _pick(rng, FAMILIES)
    if family not in FAMILIES:
        raise InputError(f"unknown key family {family!r}; families: {', '.join(FAMILIES)}")
    first, second, join = _parts(facts, family, heldout)
    quote = rng.random() < 0.5 if quote is None else quote
    a0, b0 = first(), second()
    keys = [facts._fresh(lambda: join(a0, b0))]
    for _ in range(n - 1):
        share = rng.random()
        if share < SHARE_P:
            make = lambda: join(a0, second())
        elif share < 2 * SHARE_P:
            make = lambda: join(first(), b0)
        else:
            make = lambda: join(first(), second())
        keys.append(facts._fresh(make))
    return [f"'{k}'" for k in keys] if quote else keys
