"""Two-hop retrieval: "X keeps a workshop in town T" and "town T lies on river R" sit at two
random depths of the essays; the question names X and asks for R. Distractor pairs about other
people and towns make a single retrieved fact insufficient.

``multihop_num`` is the same two-hop structure with a 7-digit answer: "entry K defers to entry
K2" and "the registry number filed under K2 reads N". Answering with a number (copied, as in the
needle tasks) rather than an invented word separates "can follow a pointer" from "can spell an
unseen name", which the bundled retrieval model cannot do well (RESULTS.md).
"""

from __future__ import annotations

from kvstack.eval.tasks import vocab
from kvstack.eval.tasks.base import ANY, Sample, Task
from kvstack.eval.tasks.niah import haystack_with, random_key, random_number


class MultiHop(Task):
    name = "multihop"
    summary = "two linked facts (person -> town -> river) at two depths of the essays"
    max_new_tokens = 12
    distractors = 2

    def build(self, tokenizer, length, rng, index):
        n = 1 + self.distractors
        people = rng.sample(vocab.PEOPLE, n)
        towns = rng.sample(vocab.TOWNS, n)
        rivers = rng.sample(vocab.RIVERS, n)
        facts = [vocab.HOP_WORKSHOP.format(person=p, town=t) for p, t in zip(people, towns)]
        facts += [vocab.HOP_RIVER.format(town=t, river=r) for t, r in zip(towns, rivers)]
        ctx, depths = haystack_with(tokenizer, length, rng, facts)
        return Sample(
            self.name, index, ctx, vocab.HOP_QUESTION.format(person=people[0]), (rivers[0],), ANY,
            vocab.HOP_PREFIX, meta={"person": people[0], "town": towns[0], "hop_depths": [depths[0], depths[n]]},
        )


class MultiHopNumber(Task):
    name = "multihop_num"
    summary = "a registry entry pointing to another entry whose number is stated, at two depths of the essays"
    max_new_tokens = 16
    distractors = 2

    def build(self, tokenizer, length, rng, index):
        keys, values = set(), set()
        n = 1 + self.distractors
        asked = [random_key(rng, keys) for _ in range(n)]
        targets = [random_key(rng, keys) for _ in range(n)]
        numbers = [random_number(rng, values) for _ in range(n)]
        facts = [vocab.HOP_POINTER.format(key=k, target=t) for k, t in zip(asked, targets)]
        facts += [vocab.NEEDLE.format(key=t, value=v) for t, v in zip(targets, numbers)]
        ctx, depths = haystack_with(tokenizer, length, rng, facts)
        return Sample(
            self.name, index, ctx, vocab.HOP_NUM_QUESTION.format(key=asked[0]), (numbers[0],), ANY,
            vocab.HOP_NUM_PREFIX.format(key=asked[0]),
            meta={"key": asked[0], "target": targets[0], "hop_depths": [depths[0], depths[n]]},
        )
