"""RULER's single-hop QA (``qa_1``): a SQuAD question over its passage, hidden among passages of
other articles until the prompt fills the length budget, in RULER's document format."""

from __future__ import annotations

from kvstack.eval.tasks.base import ANY, Sample, Task
from kvstack.eval.tasks.qa import pick_documents, squad_items
from kvstack.eval.tasks.ruler import templates as T
from kvstack.eval.tasks.ruler.fit import budget


class RulerQA(Task):
    name = "ruler_qa_1"
    summary = "RULER: a SQuAD question over its passage among distractor passages (RULER's wording)"
    max_new_tokens = 32

    def build(self, tokenizer, length, rng, index):
        items = squad_items()
        probe = T.QA_QUESTION.format(query="x" * 60)  # questions run to ~15 tokens; reserve for a long one
        target = budget(tokenizer, length, probe, T.QA_PREFIX, self.max_new_tokens) - 48
        gold, chosen = pick_documents(tokenizer, target, rng, T.QA_DOCUMENT)
        docs = [T.QA_DOCUMENT.format(n=n + 1, text=items[i]["context"]) for n, i in enumerate(chosen)]
        item = items[gold]
        return Sample(
            self.name, index, T.QA_INTRO + "\n\n" + "\n\n".join(docs), T.QA_QUESTION.format(query=item["question"]),
            tuple(item["answers"]), ANY, T.QA_PREFIX, verbatim=True,
            meta={"squad_id": item["id"], "gold_document": chosen.index(gold) + 1, "documents": len(chosen)},
        )
