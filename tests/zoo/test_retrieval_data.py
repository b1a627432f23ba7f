"""The synthetic retrieval data: seeded, exact in length, facts where they say, ids equal to real tokenization."""

from __future__ import annotations

import re

import numpy as np
import pytest

from kvstack.errors import InputError
from training import templates as T
from training.retrieval import TASKS, TRAIN, Facts, SampleMaker, make_batch


@pytest.fixture(scope="module")
def maker(vocab, essay_stream):
    return SampleMaker(vocab, essay_stream)


@pytest.mark.parametrize("task", TASKS)
def test_samples_are_exact_and_retokenize_to_the_same_ids(task, maker, vocab):
    s = maker.make(task, 600, np.random.default_rng(7), bos=False)
    assert s.ids.shape == (601,) and s.answer.shape == (601,)
    assert s.ids[-1] == vocab.eot
    # Token-level assembly must equal tokenizing the whole text at once (what a user's prompt gives).
    text = vocab.tokenizer.decode(s.ids[:-1].tolist())
    assert np.array_equal(np.asarray(vocab.tokenizer.encode(text, add_special_tokens=False).ids), s.ids[:-1])


@pytest.mark.parametrize("task", TASKS)
def test_facts_and_answers_sit_where_the_sample_says(task, maker, vocab):
    s = maker.make(task, 900, np.random.default_rng(11))
    decode = lambda a, b: vocab.tokenizer.decode(s.ids[a:b].tolist())
    for (a, b), needle in zip(s.needle_spans, s.needle_texts):
        assert decode(a, b) == " " + needle
        assert b <= s.context_len
    for i, ((block, start, end), (question, answer, prefix)) in enumerate(zip(s.qa_spans, s.qas)):
        assert question in decode(block, start) and decode(block, start).endswith(prefix)
        assert decode(start, end) == " " + answer
        # After a previous answer, the block's first token (the newline that ends that answer) is trained on.
        assert s.answer[start:end].all() and s.answer[block] == (i > 0) and not s.answer[block + 1 : start].any()
    assert not s.answer[: s.context_len].any()


def test_depths_place_a_single_fact_at_that_fraction_of_the_haystack(maker):
    for depth in (0.1, 0.5, 0.9):
        s = maker.make("passkey", 1000, np.random.default_rng(3), depths=[depth])
        (start, end), = s.needle_spans
        # The fact goes after the sentence end nearest the depth (of the haystack, which excludes the
        # fact itself); filler sentences are ~7 tokens long.
        assert abs(start / (s.context_len - (end - start)) - depth) < 0.02


def test_same_seed_same_sample_other_seed_other_sample(maker):
    a = maker.make("multikey", 512, np.random.default_rng(5))
    b = maker.make("multikey", 512, np.random.default_rng(5))
    c = maker.make("multikey", 512, np.random.default_rng(6))
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.answer, b.answer) and a.qas == b.qas
    assert not np.array_equal(a.ids, c.ids)


def test_batches_are_a_function_of_the_seed(maker, essay_stream):
    x1, m1 = make_batch(maker, essay_stream, 6, 256, np.random.default_rng([1, 2]), 0.5)
    x2, m2 = make_batch(maker, essay_stream, 6, 256, np.random.default_rng([1, 2]), 0.5)
    assert np.array_equal(x1, x2) and np.array_equal(m1, m2)
    assert m1[:3].any(axis=1).all() and not m1[3:].any()  # 3 retrieval rows, then 3 plain-text rows


def _made_by(text: str, frames: list[str]) -> bool:
    """Could ``text`` be ``frame.format(...)`` (first letter capitalised) for one of ``frames``?"""
    import re

    for frame in frames:
        pattern = re.escape(frame.replace("{{", "{").replace("}}", "}"))
        pattern = re.sub(r"\\\{[A-Za-z0-9]+\\\}", ".+", pattern)
        if re.fullmatch(pattern, text[0].lower() + text[1:], flags=re.S) or re.fullmatch(pattern, text, flags=re.S):
            return True
    return False


def test_heldout_split_uses_only_heldout_frames_and_questions(maker):
    for seed in range(5):
        s = maker.make("single", 512, np.random.default_rng(seed), split="heldout")
        assert all(_made_by(n, T.HELDOUT_NEEDLE_FRAMES) for n in s.needle_texts)
        assert _made_by(s.qas[0][0], T.HELDOUT_QUESTION_FRAMES)
        t = maker.make("single", 512, np.random.default_rng(seed), split="train")
        assert all(_made_by(n, T.NEEDLE_FRAMES + T.GENERATED_NEEDLE_FRAMES) for n in t.needle_texts)
    assert set(T.HELDOUT_NEEDLE_FRAMES).isdisjoint(T.NEEDLE_FRAMES)
    assert set(T.HELDOUT_QUESTION_FRAMES).isdisjoint(T.QUESTION_FRAMES)
    for kind, attrs in T.HELDOUT_ATTRIBUTES.items():
        assert set(attrs).isdisjoint(T.ATTRIBUTES[kind])
    assert set(T.HELDOUT_FIRST_NAMES).isdisjoint(T.FIRST_NAMES)


def test_bad_requests_raise_input_errors(maker):
    rng = np.random.default_rng(0)
    with pytest.raises(InputError, match="unknown task"):
        maker.make("summarise", 512, rng)
    with pytest.raises(InputError, match="at least 128"):
        maker.make("single", 64, rng)
    with pytest.raises(InputError, match="split"):
        maker.make("single", 512, rng, split="test")
    with pytest.raises(InputError, match="depths"):
        maker.make("single", 512, rng, depths=[0.1, 0.2, 0.3])


def test_training_strings_include_every_template_group():
    strings = T.training_strings()
    assert set(T.NEEDLE_FRAMES) <= strings and set(T.QUESTION_FRAMES) <= strings and set(T.FIRST_NAMES) <= strings
    assert not (set(T.HELDOUT_NEEDLE_FRAMES) & strings)


def test_generated_frames_are_many_distinct_and_avoid_every_heldout_and_evaluation_phrase():
    from kvstack.eval.tasks import vocab as V
    from training import frame_grammar as G

    needles, questions = T.GENERATED_NEEDLE_FRAMES, T.GENERATED_QUESTION_FRAMES
    assert len(set(needles)) == len(needles) >= 2000 and len(set(questions)) == len(questions) >= 1000
    assert all({"{E}", "{A}", "{V}"} <= set(re.findall(r"\{[A-Z]\}", f)) for f in needles)
    assert all({"{E}", "{A}"} == set(re.findall(r"\{[A-Z]\}", f)) for f in questions)
    assert G.needle_frames() == needles  # deterministic: training is reproducible
    text = [f.lower() for f in needles + questions]
    assert not [b for b in G.BANNED if any(b in f for f in text)]
    # Every distinctive word of the held-out frames and of the evaluation templates is banned or absent.
    for frame in T.HELDOUT_NEEDLE_FRAMES + T.HELDOUT_QUESTION_FRAMES + list(V.TEMPLATES):
        assert frame not in needles + questions
    assert not set(needles + questions) & set(T.HELDOUT_NEEDLE_FRAMES + T.HELDOUT_QUESTION_FRAMES)


def test_training_samples_draw_generated_frames_and_invented_attributes(maker):
    rng = np.random.default_rng(7)
    samples = [maker.make("single", 256, rng) for _ in range(60)]
    needles = [n for s in samples for n in s.needle_texts]
    assert sum(_made_by(n, T.GENERATED_NEEDLE_FRAMES) and not _made_by(n, T.NEEDLE_FRAMES) for n in needles) >= 15
    known = {a for attrs in T.ATTRIBUTES.values() for a in attrs}
    drawn = [Facts(TRAIN, np.random.default_rng(i)).attribute()[1] for i in range(200)]
    invented = [a for a in drawn if a not in known]
    assert len(invented) >= 40 and not set(invented) & T.HELDOUT_ATTRIBUTE_SET


def test_open_value_words_feed_training_values_and_leave_heldout_samples_unchanged(vocab, essay_stream):
    from kvstack.eval.texts import essay, essay_names
    from training.value_words import excluded_words, harvest

    words = harvest([essay(n) for n in essay_names()[:10]], limit=500, min_count=2)
    assert 100 <= len(words) <= 500 and words == sorted(words)
    assert not set(words) & excluded_words() and "kohlrabi" in excluded_words() and "clerk" in excluded_words()
    plain, opened = SampleMaker(vocab, essay_stream), SampleMaker(vocab, essay_stream, open_words=words)
    drawn = [Facts(opened.train_book, np.random.default_rng(i)).value("word") for i in range(100)]
    assert 25 <= sum(w in words for w in drawn) <= 75  # about half the word values come from the open list
    for seed in range(4):
        a = plain.make("single", 512, np.random.default_rng(seed), split="heldout")
        b = opened.make("single", 512, np.random.default_rng(seed), split="heldout")
        assert np.array_equal(a.ids, b.ids)
