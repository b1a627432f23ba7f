"""Needle-in-a-haystack tasks (RULER-style) and the classic passkey test.

Needles are registry numbers filed under "<colour>-<object>" keys, hidden in the essays at
random depths; the answer is a 7-digit number, so "contains" scoring cannot be fooled by
a model that echoes the question.
"""

from __future__ import annotations

import random

from kvstack.eval.tasks import vocab
from kvstack.eval.tasks.base import ALL, ANY, Sample, Task, count_tokens
from kvstack.eval.tasks.haystack import filler, insert


def random_key(rng: random.Random, taken: set[str]) -> str:
    while True:
        key = f"{rng.choice(vocab.KEY_COLOURS)}-{rng.choice(vocab.KEY_OBJECTS)}"
        if key not in taken:
            taken.add(key)
            return key


def random_number(rng: random.Random, taken: set[str]) -> str:
    while True:
        value = str(rng.randrange(1_000_000, 10_000_000))
        if value not in taken:
            taken.add(value)
            return value


def depth(rng: random.Random) -> float:
    return round(rng.uniform(0.05, 0.95), 3)


def haystack_with(tokenizer, length: int, rng: random.Random, needles: list[str]) -> tuple[str, list[float]]:
    """Essay filler of ``length`` tokens minus the needles, with each needle at a random depth."""
    need = sum(count_tokens(tokenizer, n) + 1 for n in needles)
    depths = [depth(rng) for _ in needles]
    text = filler(tokenizer, max(length - need, 0), rng)
    return insert(text, list(zip(depths, needles))), depths


class NiahSingle(Task):
    name = "niah_single"
    summary = "one registry number hidden in essays; retrieve it by its key"
    max_new_tokens = 16

    def build(self, tokenizer, length, rng, index):
        keys, values = set(), set()
        key, value = random_key(rng, keys), random_number(rng, values)
        ctx, depths = haystack_with(tokenizer, length, rng, [vocab.NEEDLE.format(key=key, value=value)])
        return Sample(
            self.name, index, ctx, vocab.NEEDLE_QUESTION.format(key=key), (value,), ANY,
            vocab.NEEDLE_PREFIX.format(key=key), meta={"key": key, "depths": depths},
        )


class NiahMultikey(Task):
    name = "niah_multikey"
    summary = "four registry numbers under different keys; retrieve the one asked for"
    max_new_tokens = 16
    distractors = 3

    def build(self, tokenizer, length, rng, index):
        keys, values = set(), set()
        pairs = [(random_key(rng, keys), random_number(rng, values)) for _ in range(1 + self.distractors)]
        ctx, depths = haystack_with(tokenizer, length, rng, [vocab.NEEDLE.format(key=k, value=v) for k, v in pairs])
        key, value = pairs[0]
        return Sample(
            self.name, index, ctx, vocab.NEEDLE_QUESTION.format(key=key), (value,), ANY,
            vocab.NEEDLE_PREFIX.format(key=key), meta={"key": key, "depths": depths, "distractors": pairs[1:]},
        )


class NiahMultivalue(Task):
    name = "niah_multivalue"
    summary = "four registry numbers under one key; retrieve all four"
    max_new_tokens = 48
    values_per_key = 4

    def build(self, tokenizer, length, rng, index):
        keys, taken = set(), set()
        key = random_key(rng, keys)
        values = [random_number(rng, taken) for _ in range(self.values_per_key)]
        ctx, depths = haystack_with(tokenizer, length, rng, [vocab.NEEDLE.format(key=key, value=v) for v in values])
        return Sample(
            self.name, index, ctx, vocab.MULTIVALUE_QUESTION.format(key=key), tuple(values), ALL,
            vocab.MULTIVALUE_PREFIX.format(key=key), meta={"key": key, "depths": depths},
        )


class NiahMultiquery(Task):
    name = "niah_multiquery"
    summary = "four registry numbers under different keys; retrieve two of them in one answer"
    max_new_tokens = 40
    needles, asked = 4, 2

    def build(self, tokenizer, length, rng, index):
        keys, values = set(), set()
        pairs = [(random_key(rng, keys), random_number(rng, values)) for _ in range(self.needles)]
        ctx, depths = haystack_with(tokenizer, length, rng, [vocab.NEEDLE.format(key=k, value=v) for k, v in pairs])
        asked = rng.sample(pairs, self.asked)
        names = " and ".join(f"'{k}'" for k, _ in asked)
        return Sample(
            self.name, index, ctx, vocab.MULTIQUERY_QUESTION.format(keys=names), tuple(v for _, v in asked), ALL,
            vocab.MULTIQUERY_PREFIX.format(keys=names), meta={"keys": [k for k, _ in asked], "depths": depths},
        )


class Passkey(Task):
    name = "passkey"
    summary = "a 5-digit pass key hidden in repetitive filler (Mohtashami & Jaggi's passkey test)"
    max_new_tokens = 12

    def build(self, tokenizer, length, rng, index):
        value = str(rng.randrange(10_000, 100_000))
        needle = vocab.PASSKEY_NEEDLE.format(value=value)
        per_round = count_tokens(tokenizer, " ".join(vocab.PASSKEY_FILLER)) + 1
        rounds = max((length - count_tokens(tokenizer, needle)) // per_round, 1)
        text = " ".join(" ".join(vocab.PASSKEY_FILLER) for _ in range(rounds))
        d = depth(rng)
        return Sample(
            self.name, index, insert(text, [(d, needle)]), vocab.PASSKEY_QUESTION, (value,), ANY,
            vocab.PASSKEY_PREFIX, meta={"depths": [d]},
        )
