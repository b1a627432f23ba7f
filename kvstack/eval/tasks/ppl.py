"""Perplexity of a held-out continuation given a (compressed) context.

The text is essays never used as haystack (or the bundled King James excerpt for
``ppl_kjv``); the context is ``length`` tokens and the next ``continuation_tokens`` are
scored teacher-forced. The split is at a space, so both halves tokenize naturally.
"""

from __future__ import annotations

from kvstack.eval.tasks.base import Sample, Task
from kvstack.eval.tasks.haystack import corpus


class Perplexity(Task):
    name = "ppl"
    summary = "negative log-likelihood of 128 held-out essay tokens after the context"
    kind = "nll"
    continuation_tokens = 128
    source = "heldout"

    def build(self, tokenizer, length, rng, index):
        c = corpus(tokenizer, self.source)
        total = length + self.continuation_tokens
        start = rng.randrange(max(c.num_tokens - total - 8, 1))
        text = c.span(start, total + 8)
        cut = c.starts[start + length] - c.starts[start]
        while cut < len(text) and not text[cut].isspace():  # move the cut to the next space
            cut += 1
        end = c.starts[start + total] - c.starts[start]
        return Sample(
            self.name, index, text[:cut], "", (), continuation=text[cut:end].rstrip(),
            meta={"source": self.source, "start_token": start},
        )


class PerplexityKJV(Perplexity):
    name = "ppl_kjv"
    summary = "negative log-likelihood of 128 King James Version tokens after the context"
    source = "kjv"
