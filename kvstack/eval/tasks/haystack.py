"""Filler text cut to a token budget, and needles placed into it at chosen depths.

The haystack is the Paul Graham essays (as in NIAH and RULER), tokenized once per tokenizer
with character offsets so a span of exactly N tokens can be cut anywhere. Every fifth essay
is held out of the haystack and kept for perplexity, so the two never share text.
"""

from __future__ import annotations

import random
import re
from bisect import bisect_left
from functools import lru_cache
from pathlib import Path

from kvstack.errors import InputError

DATA = Path(__file__).resolve().parent.parent / "data"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_CORPORA: dict[tuple[int, str], tuple[object, Corpus]] = {}


def clean(text: str) -> str:
    """Collapse the essays' hard line wraps and runs of spaces into single spaces."""
    return re.sub(r"\s+", " ", text).strip()


@lru_cache(maxsize=1)
def _essay_split() -> tuple[tuple[str, ...], tuple[str, ...]]:
    from kvstack.eval.texts import essay_names

    names = essay_names()
    return tuple(n for i, n in enumerate(names) if i % 5), tuple(n for i, n in enumerate(names) if i % 5 == 0)


def haystack_essays() -> tuple[str, ...]:
    return _essay_split()[0]


def heldout_essays() -> tuple[str, ...]:
    """Essays never used as haystack: the perplexity text."""
    return _essay_split()[1]


def _source_text(name: str) -> str:
    from kvstack.eval.texts import essay

    if name == "haystack":
        return " ".join(clean(essay(n)) for n in haystack_essays())
    if name == "heldout":
        return " ".join(clean(essay(n)) for n in heldout_essays())
    if name == "kjv":
        return clean((DATA / "kjv_excerpt.txt").read_text(encoding="utf-8"))
    raise InputError(f"unknown text corpus {name!r}: haystack, heldout or kjv")


class Corpus:
    """A long text tokenized once; :meth:`span` cuts ``n`` tokens of it starting anywhere."""

    def __init__(self, text: str, tokenizer) -> None:
        self.text = text
        try:
            enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            self.starts = [int(a) for a, _ in enc["offset_mapping"]]
        except (NotImplementedError, KeyError, TypeError):  # slow tokenizers: even spacing, good to a few %
            n = len(tokenizer(text, add_special_tokens=False).input_ids)
            self.starts = [round(i * len(text) / n) for i in range(n)]
        self.starts.append(len(text))

    @property
    def num_tokens(self) -> int:
        return len(self.starts) - 1

    def span(self, start: int, n: int) -> str:
        """Text of tokens ``start .. start+n`` (``n`` must fit the corpus)."""
        if n > self.num_tokens:
            raise InputError(
                f"asked for {n} tokens of text but the corpus holds {self.num_tokens}; use a shorter length"
            )
        start = start % (self.num_tokens - n + 1)
        return self.text[self.starts[start] : self.starts[start + n]]


def corpus(tokenizer, name: str = "haystack") -> Corpus:
    """The named corpus (haystack | heldout | kjv) tokenized by ``tokenizer``, cached per tokenizer."""
    key = (id(tokenizer), name)
    hit = _CORPORA.get(key)
    if hit is None or hit[0] is not tokenizer:
        hit = (tokenizer, Corpus(_source_text(name), tokenizer))
        _CORPORA[key] = hit
    return hit[1]


def filler(tokenizer, n_tokens: int, rng: random.Random, name: str = "haystack") -> str:
    """Whole sentences from a random place in the corpus, as close to ``n_tokens`` tokens as
    sentence boundaries allow (within half a sentence either way)."""
    if n_tokens <= 0:
        return ""
    c = corpus(tokenizer, name)
    pad = 160  # room to start and end on a sentence boundary
    if n_tokens + pad > c.num_tokens:
        raise InputError(
            f"asked for {n_tokens} tokens of '{name}' text but it holds {c.num_tokens}; use a shorter length"
        )
    s = rng.randrange(c.num_tokens - n_tokens - pad)
    a, b = c.starts[s], c.starts[s + n_tokens + pad]
    bounds = [m.end() for m in _SENTENCE_END.finditer(c.text, a, b)]
    if len(bounds) < 2:
        return c.text[a : c.starts[s + n_tokens]].strip()
    t0 = bisect_left(c.starts, bounds[0])
    end = min(bounds[1:], key=lambda x: abs(bisect_left(c.starts, x) - t0 - n_tokens))
    return c.text[bounds[0] : end].strip()


def insert(text: str, needles: list[tuple[float, str]]) -> str:
    """Put each ``(depth, sentence)`` at the sentence boundary nearest ``depth`` (0 = start, 1 = end)."""
    sentences = _SENTENCE_END.split(text) if text else []
    ends, acc = [], 0
    for s in sentences:
        acc += len(s) + 1
        ends.append(acc)
    slots: dict[int, list[str]] = {}
    for depth, needle in sorted(needles, key=lambda x: x[0]):
        target = depth * acc
        slot = min(range(len(sentences) + 1), key=lambda i: abs((ends[i - 1] if i else 0) - target))
        slots.setdefault(slot, []).append(needle)
    out = []
    for i in range(len(sentences) + 1):
        out.extend(slots.get(i, []))
        if i < len(sentences):
            out.append(sentences[i])
    return " ".join(out)
