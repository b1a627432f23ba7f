"""Variable tracking (RULER): follow a chain of assignments scattered through the essays.

``slot A = 41234; slot B = slot A; ...``: the answer is every slot name in the chain, so a
cache that dropped one link loses the names after it. A second, shorter chain with another
value is a distractor.
"""

from __future__ import annotations

import random
import string

from kvstack.eval.tasks import vocab
from kvstack.eval.tasks.base import ALL, Sample, Task, count_tokens
from kvstack.eval.tasks.haystack import filler, insert


def slot_name(rng: random.Random, taken: set[str]) -> str:
    while True:
        name = "".join(rng.choice(string.ascii_uppercase) for _ in range(5))
        if name not in taken:
            taken.add(name)
            return name


def chain(rng: random.Random, taken: set[str], value: str, hops: int) -> tuple[list[str], list[str]]:
    """Slot names and their assignment sentences, first assignment first."""
    names = [slot_name(rng, taken) for _ in range(hops + 1)]
    lines = [vocab.VAR_ASSIGN_VALUE.format(name=names[0], value=value)]
    lines += [vocab.VAR_ASSIGN_COPY.format(name=b, source=a) for a, b in zip(names, names[1:])]
    return names, lines


class VarTrack(Task):
    name = "vartrack"
    summary = "follow a 4-hop chain of slot assignments in the essays; name every slot holding the value"
    max_new_tokens = 40
    hops = 4

    def build(self, tokenizer, length, rng, index):
        taken: set[str] = set()
        value = str(rng.randrange(10_000, 100_000))
        other = str((int(value) + rng.randrange(1, 89_999)) % 90_000 + 10_000)
        names, lines = chain(rng, taken, value, self.hops)
        _, decoy = chain(rng, taken, other, 2)
        need = sum(count_tokens(tokenizer, s) + 1 for s in lines + decoy)
        text = filler(tokenizer, max(length - need, 0), rng)
        # a chain's statements keep their order: sorted depths, assigned in sequence
        depths = sorted(round(rng.uniform(0.05, 0.95), 3) for _ in lines)
        decoy_depths = sorted(round(rng.uniform(0.05, 0.95), 3) for _ in decoy)
        ctx = insert(text, list(zip(depths, lines)) + list(zip(decoy_depths, decoy)))
        return Sample(
            self.name, index, ctx, vocab.VAR_QUESTION.format(value=value), tuple(names), ALL,
            vocab.VAR_PREFIX.format(value=value), meta={"value": value, "depths": depths, "decoy_value": other},
        )
