"""The harness's multi-key test stays held out from the retrieval model's training data (issue 3).

Why: run 6 lifted ``niah_multikey`` from 13/40 to 39/40 by training on ``lookalike`` samples (many facts in
one shared frame about keys of one shape). That gain only means "learned the structure" if no training
generator writes the harness's sentences or its key words. Checked on the generated text itself (facts,
questions, answer prefixes) of every training task, with an open vocabulary harvested from real prose by the
same code as training (``value_words.harvest``), so the exclusion of the evaluation's words is exercised.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from kvstack.eval.tasks import vocab as V
from training.retrieval import TASKS, SampleMaker

# Plain English the harness shares with any question ("What is the ...", "... in the text?"): not phrasing.
GENERIC = {"what is", "is the", "in the", "the text", "what is the", "in the text"}
# Two-word runs the harness's fact ("Archive note: the registry number filed under '{key}' reads {value}.")
# shares with training facts in other sentences: lead-ins "Note: the ..." / "Side note: the ..." of the frame
# grammar, and the hand-written frame "According to the registry, {E} uses the {A} {V}." (also in run 4's data).
SHARED_BIGRAMS = {"note the", "the registry"}
# Single words of the harness's multi-key sentences that training facts also use, each in other phrasing:
# "room number ~ 6568...", "According to the registry, X uses the combination ...", "... lane K-148 reads 4e06",
# "A note pinned to the wall said ...", "What does the text say ...". Pinned so that the overlap cannot grow.
SHARED_WORDS = {"the", "is", "what", "in", "number", "note", "reads", "registry", "text"}
HARNESS = (V.NEEDLE, V.NEEDLE_QUESTION, V.NEEDLE_PREFIX)  # niah_multikey's fact, question and answer prefix


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def _grams(text: str, n: int) -> set[str]:
    w = _words(text)
    return {" ".join(w[i : i + n]) for i in range(len(w) - n + 1)}


def _harness_grams(n: int) -> set[str]:
    # Placeholders split the runs, so no gram bridges a key or a value.
    return {g for t in HARNESS for part in re.split(r"\{[^}]*\}", t) for g in _grams(part, n)}


@pytest.fixture(scope="module")
def generated(vocab, essay_stream) -> dict[str, list[str]]:
    """Per training task, the text its generator wrote into 200 samples (facts, questions, answer prefixes)."""
    from kvstack.eval.texts import essay, essay_names
    from training.value_words import harvest

    words = harvest((essay(n) for n in essay_names()), min_count=1)
    assert len(words) > 3000  # a real open vocabulary, as training's (12,478 words from the training prose)
    maker = SampleMaker(vocab, essay_stream, open_words=words)
    out = {}
    for task in TASKS:
        texts = []
        for seed in range(200):
            s = maker.make(task, 512, np.random.default_rng([seed, 6]), split="train")
            texts += [*s.needle_texts, *(q for q, _, _ in s.qas), *(p for _, _, p in s.qas if p)]
        out[task] = texts
    return out


def test_every_training_task_is_generated_including_lookalike(generated):
    assert "lookalike" in generated and len(generated) == len(TASKS)
    assert all(len(texts) >= 400 for texts in generated.values())  # 200 samples: >= 1 fact and 1 question each


def test_no_training_fact_or_question_uses_a_key_word_of_the_harness(generated):
    keys = {w.lower() for w in (*V.KEY_COLOURS, *V.KEY_OBJECTS)}  # harness keys are '<colour>-<object>'
    hits = {(task, w) for task, texts in generated.items() for t in texts for w in set(_words(t)) & keys}
    assert not hits


def test_no_training_text_holds_a_phrase_of_the_harness_multikey_sentences(generated):
    harness = _harness_grams(2) | _harness_grams(3)
    assert {"registry number", "filed under", "archive note", "number filed under", "the text above"} <= harness
    seen = {g for texts in generated.values() for t in texts for g in (_grams(t, 2) | _grams(t, 3)) if g in harness}
    assert "the registry" in seen  # the check is live: it finds the one-word-plus-article overlap it allows
    assert seen <= GENERIC | SHARED_BIGRAMS, seen - GENERIC - SHARED_BIGRAMS
    assert not {g for g in seen if len(g.split()) == 3} - GENERIC  # no three-word run of the harness at all


def test_the_harness_words_that_training_shares_are_the_pinned_few(generated):
    harness_words = {w for t in HARNESS for w in _words(re.sub(r"\{[^}]*\}", " ", t))}
    seen = {w for texts in generated.values() for t in texts for w in _words(t)} & harness_words
    assert "registry" in seen  # the pin is live: the hand-written frame "According to the registry, ..." is drawn
    assert seen <= SHARED_WORDS, seen - SHARED_WORDS
    assert not seen & {"archive", "filed", "above", "under"}
