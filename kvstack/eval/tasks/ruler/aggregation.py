"""RULER's aggregation tasks: common-words extraction (a numbered list where 10 words appear 30
times and the rest 3 times each) and frequent-words extraction (coded 6-letter words drawn from
a Zipf distribution with alpha 2; the most frequent is replaced by dots, the next three are the
answer). Every occurrence counts, so eviction that keeps only salient tokens suffers.
"""

from __future__ import annotations

import math
import random
import string
from functools import lru_cache

from kvstack.eval.tasks.base import ALL, Sample, Task
from kvstack.eval.tasks.ruler import templates as T
from kvstack.eval.tasks.ruler.fit import budget, fit_units
from kvstack.eval.tasks.ruler.words import english_words


@lru_cache(maxsize=4)
def _zeta(alpha: float, terms: int = 100_000) -> float:
    """Riemann zeta(alpha) for alpha > 1: a partial sum plus its integral tail (computed once per alpha)."""
    return sum(k**-alpha for k in range(1, terms)) + 1 / ((alpha - 1) * terms ** (alpha - 1))


class RulerCommonWords(Task):
    name = "ruler_cwe"
    summary = "RULER: name the 10 words that appear 30 times each in a numbered list (others: 3 times)"
    max_new_tokens = 120
    common, common_repeats, rare_repeats = 10, 30, 3

    def build(self, tokenizer, length, rng, index):
        pool = list(english_words())
        rng.shuffle(pool)
        common, rare = pool[: self.common], pool[self.common :]
        order_seed = rng.random()
        target = budget(tokenizer, length, T.CWE_QUESTION, T.CWE_PREFIX, self.max_new_tokens)
        # RULER's 30 repeats need ~1.5k tokens; shorter budgets repeat less (always above the rare words' 3)
        repeats = self.common_repeats if target >= 3500 else max(self.rare_repeats + 1, target // 120)

        def build(n_rare: int) -> str:
            items = [w for w in common for _ in range(repeats)]
            items += [w for w in rare[:n_rare] for _ in range(self.rare_repeats)]
            random.Random(order_seed).shuffle(items)
            return T.CWE_INTRO + "\n" + " ".join(f"{i + 1}. {w}" for i, w in enumerate(items))

        n, context = fit_units(tokenizer, target, build, max(target // 15, 1), most=len(rare))
        return Sample(self.name, index, context, T.CWE_QUESTION, tuple(common), ALL, T.CWE_PREFIX, verbatim=True,
                      meta={"rare_words": n, "common_repeats": repeats})


class RulerFrequentWords(Task):
    name = "ruler_fwe"
    summary = "RULER: name the 3 most frequent coded words of a Zipf-distributed text (alpha 2)"
    max_new_tokens = 50
    alpha, word_length = 2.0, 6

    def build(self, tokenizer, length, rng, index):
        vocab_size = max(length // 50, 8)
        vocab: set[str] = set()
        while len(vocab) < vocab_size:
            vocab.add("".join(rng.choice(string.ascii_lowercase) for _ in range(self.word_length)))
        words = sorted(vocab)
        rng.shuffle(words)
        words[0] = "...."  # RULER: the top-ranked word is noise ("please ignore the dots")
        zeta = _zeta(self.alpha)
        order_seed = rng.random()

        def build(total: int) -> str:
            counts = [math.floor(total * (k + 1) ** -self.alpha / zeta) for k in range(len(words))]
            text = [w for w, c in zip(words, counts) for _ in range(c)]
            random.Random(order_seed).shuffle(text)
            return T.FWE_INTRO + " " + " ".join(text)

        target = budget(tokenizer, length, T.FWE_QUESTION, T.FWE_PREFIX, self.max_new_tokens)
        n, context = fit_units(tokenizer, target, build, max(target // 3, 1))
        return Sample(self.name, index, context, T.FWE_QUESTION, tuple(words[1:4]), ALL, T.FWE_PREFIX, verbatim=True,
                      meta={"words": n})
