"""What a task is: a seeded generator of samples with verifiable answers at a target length.

A :class:`Sample` is plain text (context, question, answers), so one sample serves any model:
the prompt is formatted per model later (:mod:`kvstack.eval.prompt`). Lengths are in tokens
of the model's own tokenizer, which is why generators receive it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import ClassVar

# How answers are scored: "any" - one of several acceptable strings (extractive QA);
# "all" - every string is required (multi-value retrieval, variable tracking, common words).
ANY, ALL = "any", "all"


@dataclass(frozen=True)
class Sample:
    """One evaluation item.

    ``answer_prefix`` is text the answer is primed with (RULER style), appended after the
    question; ``continuation`` is set for perplexity tasks, which score it instead of
    generating. ``meta`` records how the sample was built (depths, needle keys, sources).
    """

    task: str
    index: int
    context: str
    question: str
    answers: tuple[str, ...] = ()
    mode: str = ANY
    answer_prefix: str = ""
    continuation: str = ""
    verbatim: bool = False  # the question is a benchmark's exact wording: add no framing (RULER)
    meta: dict = field(default_factory=dict)


class Task:
    """A task family. Subclasses set ``name``/``summary`` and implement :meth:`build`."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    kind: ClassVar[str] = "generate"  # "generate": answer a question; "nll": score a continuation
    max_new_tokens: ClassVar[int] = 24

    def samples(self, tokenizer, length: int, count: int, seed: int = 0) -> list[Sample]:
        """``count`` samples whose context is about ``length`` tokens; the same arguments give the same samples."""
        return [self.build(tokenizer, length, self.rng(seed, length, i), i) for i in range(count)]

    def rng(self, seed: int, length: int, index: int) -> random.Random:
        # str seeds are hashed with SHA-512 by `random`: stable across processes and Python runs
        return random.Random(f"kvstack-eval:{self.name}:{seed}:{length}:{index}")

    def build(self, tokenizer, length: int, rng: random.Random, index: int) -> Sample:
        raise NotImplementedError


def count_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False).input_ids)
