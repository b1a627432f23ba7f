"""Common-words extraction (RULER's CWE): a long numbered word list where a few words repeat
far more often than the rest; name the most frequent ones.

It needs the whole context (every occurrence counts), so it punishes eviction that keeps
only what looks salient.
"""

from __future__ import annotations

import random

from kvstack.eval.tasks import vocab
from kvstack.eval.tasks.base import ALL, Sample, Task, count_tokens


class CommonWords(Task):
    name = "cwe"
    summary = "name the 5 words that occur most often in a long numbered word list"
    max_new_tokens = 40
    top_k = 5
    common_share = 0.5  # half of the list is the common words, spread over top_k words

    def word_list(self, n_items: int, seed: float) -> tuple[str, list[str], dict]:
        rng = random.Random(seed)
        words = list(vocab.CWE_WORDS)
        rng.shuffle(words)
        common, rare = words[: self.top_k], words[self.top_k :]
        n_items = max(n_items, 4 * self.top_k)
        each_common = max(int(n_items * self.common_share) // self.top_k, 2)
        items = [w for w in common for _ in range(each_common)]
        # the rest cycles through the rare words: each appears at most ceil(rest / 75) times, always
        # fewer than any common word (n/10) for lists of 20+ items
        rest = max(n_items - len(items), 0)
        items += [rare[i % len(rare)] for i in range(rest)]
        each_rare = -(-rest // len(rare))
        rng.shuffle(items)
        text = " ".join(f"{i + 1}. {w}" for i, w in enumerate(items))
        return text, common, {"items": len(items), "each_common": each_common, "each_rare": each_rare}

    def build(self, tokenizer, length, rng, index):
        seed = rng.random()
        n_items = length // 4
        for _ in range(3):  # token cost per item varies with the tokenizer and the numbering: measure, rescale
            text, common, meta = self.word_list(n_items, seed)
            n_items = max(int(n_items * length / max(count_tokens(tokenizer, text), 1)), 1)
        text, common, meta = self.word_list(n_items, seed)
        return Sample(
            self.name, index, text, vocab.CWE_QUESTION.format(k=self.top_k), tuple(common), ALL,
            vocab.CWE_PREFIX.format(k=self.top_k), meta=meta,
        )
