"""The ``lookalike`` multi-key task and the trainer's ``--mix``: keys of one shape, one attribute, the right answer."""

from __future__ import annotations

import re

import numpy as np
import pytest

from kvstack.errors import InputError
from training import templates as T
from training.data import StepBatches, parse_mix
from training.lookalike import FAMILIES, SHARE_P, lookalike_keys
from training.retrieval import HELDOUT, TRAIN, Facts, SampleMaker

OPEN_WORDS = ["harbour", "pebbles", "tortoise", "quarrel", "monsoon", "thicket", "gravel", "orbit"]


@pytest.fixture(scope="module")
def maker(vocab, essay_stream):
    return SampleMaker(vocab, essay_stream, open_words=OPEN_WORDS)


def _parts(key: str) -> tuple[str, str]:
    key = key.strip("'")
    if key.startswith("the "):
        return tuple(key[4:].split(" ", 1))
    m = re.fullmatch(r"(\w+) ([A-Z])-(\d+)", key)  # code: "<prefix> <letter>-<number>"
    if m:
        return m[2], m[3]
    return tuple(re.split(r"[- ]", key, maxsplit=1))


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "pseudo"])
def test_distractors_share_a_part_of_the_target_key_about_as_often_as_asked(maker, family):
    shared = total = 0
    for seed in range(60):
        keys = lookalike_keys(Facts(maker.train_book, np.random.default_rng(seed)), 6, family=family)
        assert len(set(keys)) == 6  # distinct within a sample
        assert all(k.startswith("'") for k in keys) or not any(k.startswith("'") for k in keys)
        a0, b0 = _parts(keys[0])
        for k in keys[1:]:
            a, b = _parts(k)
            assert (a, b) != (a0, b0)
            shared += a == a0 or b == b0
            total += 1
    # Each distractor keeps the first part (p=SHARE_P) or the second (p=SHARE_P), or shares one by chance.
    assert 2 * SHARE_P - 0.1 <= shared / total <= 2 * SHARE_P + 0.2
    if family == "code":  # one prefix for every key of a sample
        assert len({k.strip("'").split()[0] for k in keys}) == 1


def test_lookalike_samples_ask_for_one_of_their_keys_and_answer_with_its_value(maker, vocab):
    for seed in range(12):
        s = maker.make("lookalike", 1024, np.random.default_rng(seed))
        target = s.meta["target_key"]
        question, answer, _ = s.qas[0]
        assert target in question and 3 <= s.meta["keys"] == len(s.needle_texts) <= 10
        # The target's fact is the one sentence holding both its key and the answer.
        holders = [n for n in s.needle_texts if answer in n and target.lower() in n.lower()]  # frames capitalise
        assert len(holders) == 1
        block, start, end = s.qa_spans[0]
        assert vocab.tokenizer.decode(s.ids[start:end].tolist()) == " " + answer


def test_heldout_lookalike_keys_use_no_training_word_list(maker):
    trained = set(T.FIRST_NAMES) | set(T.LAST_NAMES) | set(T.ADJECTIVES) | set(T.NOUNS) | set(OPEN_WORDS)
    for seed in range(30):
        keys = lookalike_keys(Facts(HELDOUT, np.random.default_rng(seed)), 5, heldout=True)
        words = {w for k in keys for w in re.split(r"[-' ]", k) if w}
        assert not words & trained, words & trained


def test_training_keys_never_use_the_evaluation_vocabulary(maker):
    from kvstack.eval.tasks import vocab as V

    evaluation = set(V.KEY_COLOURS) | set(V.KEY_OBJECTS)
    seen = set()
    for seed in range(200):
        for k in lookalike_keys(Facts(maker.train_book, np.random.default_rng(seed)), 4):
            seen.update(w.lower() for w in re.split(r"[-' ]", k) if w)
    assert len(seen) > 100 and not seen & evaluation


def test_bad_key_requests_raise_input_errors():
    facts = Facts(TRAIN, np.random.default_rng(0))
    with pytest.raises(InputError, match="at least 1"):
        lookalike_keys(facts, 0)
    with pytest.raises(InputError, match="unknown key family"):
        lookalike_keys(facts, 3, family="colour")


def test_parse_mix_reads_weights_and_rejects_bad_ones():
    assert parse_mix("single:0.2, lookalike:0.3") == {"single": 0.2, "lookalike": 0.3}
    with pytest.raises(InputError, match="unknown task 'lookalikes'"):
        parse_mix("lookalikes:1")
    with pytest.raises(InputError, match="not task:weight"):
        parse_mix("single=1")
    with pytest.raises(InputError, match=">= 0"):
        parse_mix("single:-1")
    with pytest.raises(InputError, match="every weight is 0"):
        parse_mix("single:0,multikey:0")


def test_training_cli_rejects_a_bad_mix_before_loading_data(tmp_path):
    from training.train import main

    with pytest.raises(InputError, match="unknown task"):
        main(["--data", str(tmp_path / "absent"), "--out", str(tmp_path / "out"), "--mix", "lookup:1"])


def test_mixed_batches_are_a_function_of_seed_and_step_and_follow_the_mix(maker, essay_stream):
    only = {"lookalike": 1.0}
    a = StepBatches(maker, essay_stream, [512] * 3, 2048, 9, 0.5, mix=only)
    b = StepBatches(maker, essay_stream, [512] * 3, 2048, 9, 0.5, mix=only)
    plain = StepBatches(maker, essay_stream, [512] * 3, 2048, 9, 0.5)
    for step in range(3):
        (_, x1, m1), (_, x2, m2) = a.batch(step), b.batch(step)
        assert x1.equal(x2) and m1.equal(m2)
        assert not x1.equal(plain.batch(step)[1])
    # A lookalike row holds 3+ facts about keys of one family, all with one attribute: at 512 tokens that
    # is what the rows must have been built from (the same rng draws give the same sample).
    _, ids, _ = a.batch(0)
    rng = np.random.default_rng([9, 0])
    rng.choice(1, p=np.ones(1))  # make_batch draws each row's task first
    first = maker.make("lookalike", 512, rng)
    assert np.array_equal(ids[0].numpy(), first.ids)
