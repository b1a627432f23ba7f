"""Task generators: lengths hit, answers verifiable from the context alone, seeded, and the
evaluation's phrasing disjoint from what the retrieval model is trained on."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from kvstack.errors import InputError
from kvstack.eval.tasks import ALL, TASKS, get_task
from kvstack.eval.tasks import vocab as V
from kvstack.eval.tasks.haystack import haystack_essays, heldout_essays

CLASSIC = [n for n in TASKS if not n.startswith("ruler_")]  # RULER's budgets are tested in test_ruler_tasks.py
GENERATE = [n for n in CLASSIC if TASKS[n].kind == "generate"]


def ntok(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False).input_ids)


@pytest.mark.parametrize("name", CLASSIC)
@pytest.mark.parametrize("length", [512, 2048])
def test_context_length_is_close_to_the_target(bpe_tokenizer, name, length):
    # whole sentences only: within half an essay sentence (up to ~130 tokens with this 600-token vocabulary)
    for s in get_task(name).samples(bpe_tokenizer, length, 3, seed=1):
        n = ntok(bpe_tokenizer, s.context)
        low = 0.6 * length if name == "qa" else length - max(100, 0.1 * length)  # qa: whole ~250-token passages
        assert low <= n <= length + 70, (name, n)


@pytest.mark.parametrize("name", GENERATE)
def test_answers_are_in_the_context(bpe_tokenizer, name):
    for s in get_task(name).samples(bpe_tokenizer, 768, 4, seed=2):
        assert s.answers and s.question
        for a in s.answers:
            assert a in s.context, (name, a)


def test_samples_are_seeded(bpe_tokenizer):
    task = get_task("niah_multikey")
    a = task.samples(bpe_tokenizer, 512, 3, seed=7)
    assert a == task.samples(bpe_tokenizer, 512, 3, seed=7)
    assert a[0] != task.samples(bpe_tokenizer, 512, 3, seed=8)[0]
    # sample i does not depend on how many samples are asked for (resume adds samples safely)
    assert task.samples(bpe_tokenizer, 512, 1, seed=7)[0] == a[0]


def test_multikey_distractors_have_other_keys_and_values(bpe_tokenizer):
    for s in get_task("niah_multikey").samples(bpe_tokenizer, 1024, 3):
        found = re.findall(r"filed under '([a-z]+-[a-z]+)' reads (\d{7})", s.context)
        assert len(found) == 4 and len({k for k, _ in found}) == 4
        assert dict(found)[s.meta["key"]] == s.answers[0]


def test_vartrack_answer_is_the_closure_of_the_chain(bpe_tokenizer):
    for s in get_task("vartrack").samples(bpe_tokenizer, 1024, 3):
        value = s.meta["value"]
        holds = {}
        for name, v in re.findall(r"slot ([A-Z]{5}) is set to (\d+)\.", s.context):
            holds[name] = v
        for name, src in re.findall(r"slot ([A-Z]{5}) is set to whatever slot ([A-Z]{5}) holds", s.context):
            holds[name] = holds[src]  # statements appear in chain order
        assert sorted(n for n, v in holds.items() if v == value) == sorted(s.answers)
        assert s.mode == ALL


def test_cwe_answers_are_strictly_the_most_frequent_words(bpe_tokenizer):
    for s in get_task("cwe").samples(bpe_tokenizer, 1024, 3):
        counts = Counter(re.findall(r"\d+\. ([a-z]+)", s.context))
        top = {w for w, _ in counts.most_common(len(s.answers))}
        assert top == set(s.answers)
        assert min(counts[w] for w in s.answers) > max(c for w, c in counts.items() if w not in s.answers)


def test_multihop_needs_both_facts(bpe_tokenizer):
    for s in get_task("multihop").samples(bpe_tokenizer, 1024, 3):
        town = re.search(rf"{s.meta['person']} keeps a small workshop in the town of ([A-Za-z ]+?)\.", s.context)[1]
        river = re.search(rf"The town of {town} lies on the banks of the river (\w+)\.", s.context)[1]
        assert (town, river) == (s.meta["town"], s.answers[0])
        assert s.answers[0] not in s.question and town not in s.question


def test_numeric_multihop_needs_the_pointer_and_the_number(bpe_tokenizer):
    for s in get_task("multihop_num").samples(bpe_tokenizer, 1024, 3):
        target = re.search(rf"the entry '{s.meta['key']}' now defers to the entry '([a-z-]+)'\.", s.context)[1]
        number = re.search(rf"the registry number filed under '{target}' reads (\d+)\.", s.context)[1]
        assert (target, number) == (s.meta["target"], s.answers[0])
        assert number not in s.question and target not in s.question
        # the asked key has no number of its own: one hop alone cannot answer
        assert f"filed under '{s.meta['key']}'" not in s.context
        assert len(re.findall(r"now defers to", s.context)) == 3


def test_qa_hides_the_gold_passage_among_other_articles(bpe_tokenizer):
    for s in get_task("qa").samples(bpe_tokenizer, 1024, 3):
        docs = s.context.split("\n\n")
        assert len(docs) == s.meta["documents"] > 1
        assert any(a in docs[s.meta["gold_document"] - 1] for a in s.answers)


def test_ppl_continuation_follows_the_context_in_the_heldout_text(bpe_tokenizer):
    from kvstack.eval.tasks.haystack import _source_text

    heldout, haystack = _source_text("heldout"), _source_text("haystack")
    for s in get_task("ppl").samples(bpe_tokenizer, 512, 3):
        assert (s.context + s.continuation) in heldout
        assert s.continuation[0].isspace() and 100 <= ntok(bpe_tokenizer, s.continuation) <= 140
        assert s.context[-200:] not in haystack
    assert not set(haystack_essays()) & set(heldout_essays())


def test_unknown_task_and_impossible_length_are_input_errors(bpe_tokenizer):
    with pytest.raises(InputError, match="unknown task 'niah'.*niah_single"):
        get_task("niah")
    with pytest.raises(InputError, match="shorter length"):
        get_task("ppl_kjv").samples(bpe_tokenizer, 10_000_000, 1)


def test_evaluation_templates_are_disjoint_from_training_templates():
    templates = pytest.importorskip("training.templates", reason="the retrieval model's templates are absent")
    train_words = {s.lower() for s in templates.training_strings()}
    ours = {w.lower() for group in V.VOCABULARIES.values() for entry in group for w in [entry, *entry.split()]}
    ours |= {w.lower() for w in V.CWE_WORDS}
    assert not ours & train_words

    def fragments(t: str) -> list[str]:  # literal runs of 4+ words between placeholders
        runs = [" ".join(x.lower().split()) for x in re.split(r"\{[^}]*\}", t)]
        return [r for r in runs if len(r.split()) >= 4]

    theirs = [" ".join(t.lower().split()) for t in templates.training_templates()]
    mine = [" ".join(t.lower().split()) for t in V.TEMPLATES]
    assert not [f for t in templates.training_templates() for f in fragments(t) if any(f in m for m in mine)]
    assert not [f for t in V.TEMPLATES for f in fragments(t) if any(f in x for x in theirs)]
