"""Two-hop retrieval: "X keeps a workshop in town T" and "town T lies on river R" sit at two
random depths of the essays; the question names X and asks for R. Distractor pairs about other
people and towns make a single retrieved fact insufficient.
"""

from __future__ import annotations

from kvstack.eval.tasks import vocab
from kvstack.eval.tasks.base import ANY, Sample, Task
from kvstack.eval.tasks.niah import haystack_with


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
