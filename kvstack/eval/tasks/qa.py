"""Extractive QA over real documents: a SQuAD v1.1 passage and its question, hidden among
distractor passages from other Wikipedia articles until the context reaches the target length.

The data is a small derived subset shipped in ``kvstack/eval/data/squad_subset.json``
(CC BY-SA 4.0; see ATTRIBUTION.txt there).
"""

from __future__ import annotations

import json
from functools import lru_cache

from kvstack.eval.tasks import vocab
from kvstack.eval.tasks.base import ANY, Sample, Task, count_tokens
from kvstack.eval.tasks.haystack import DATA

_COUNTS: dict[tuple[int, str], tuple[object, list[int]]] = {}


@lru_cache(maxsize=1)
def squad_items() -> tuple[dict, ...]:
    data = json.loads((DATA / "squad_subset.json").read_text(encoding="utf-8"))
    return tuple(data["items"])


def passage_tokens(tokenizer, document: str = vocab.QA_DOCUMENT) -> list[int]:
    """Token count of every passage formatted as ``document``, cached per tokenizer and format."""
    key = (id(tokenizer), document)
    hit = _COUNTS.get(key)
    if hit is None or hit[0] is not tokenizer:
        counts = [count_tokens(tokenizer, document.format(n=10, text=it["context"])) + 2 for it in squad_items()]
        hit = (tokenizer, counts)
        _COUNTS[key] = hit
    return hit[1]


def pick_documents(tokenizer, length: int, rng, document: str = vocab.QA_DOCUMENT) -> tuple[int, list[int]]:
    """A random gold passage and distractors from other articles filling ``length`` tokens, shuffled."""
    items = squad_items()
    counts = passage_tokens(tokenizer, document)
    gold = rng.randrange(len(items))
    others = [i for i in range(len(items)) if items[i]["title"] != items[gold]["title"]]
    rng.shuffle(others)
    chosen, used = [gold], counts[gold]
    for i in others:
        if used + counts[i] > length:
            continue
        chosen.append(i)
        used += counts[i]
        if used > length - 40:
            break
    rng.shuffle(chosen)
    return gold, chosen


class ExtractiveQA(Task):
    name = "qa"
    summary = "SQuAD v1.1 question over its passage hidden among distractor passages (real documents)"
    max_new_tokens = 16

    def build(self, tokenizer, length, rng, index):
        items = squad_items()
        gold, chosen = pick_documents(tokenizer, length, rng)
        docs = [vocab.QA_DOCUMENT.format(n=n + 1, text=items[i]["context"]) for n, i in enumerate(chosen)]
        item = items[gold]
        return Sample(
            self.name, index, "\n\n".join(docs), vocab.QA_QUESTION.format(question=item["question"]),
            tuple(item["answers"]), ANY,
            meta={"squad_id": item["id"], "gold_document": chosen.index(gold) + 1, "documents": len(chosen)},
        )
