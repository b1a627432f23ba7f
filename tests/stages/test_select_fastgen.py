"""FastGen against a float64 reference: the last window queries' attention from transformers'
eager probabilities, the five policies built and chosen by hand."""

from __future__ import annotations

import math

import pytest
import torch
from select_hand import hand_cache, make_ref, same_generation
from test_select import HKV, T, group, kept, top

import kvstack
from kvstack.errors import BudgetError, RecipeError
from kvstack.stack import Recipe
from kvstack.stages.select.fastgen import POLICIES, choose, punctuation_ids


@pytest.fixture(scope="module")
def ref():
    return make_ref()


def n_of(value: float, rows: int = T) -> int:
    return min(int(value) if value >= 1 else math.floor(value * rows + 0.5), rows)


def fastgen_ref(ref, layer: int, threshold: float, window=32, local=0.3, freq=0.3, sink=1, punct=()):
    """Per head: (policy name, kept positions)."""
    mass = group(ref.attn[layer][:, T - window :].sum(1))  # [Hkv, T]
    out = []
    for h in range(HKV):
        special = {p for p in range(T) if p < sink or int(ref.ids[p]) in punct}
        recent = set(range(T - n_of(local), T))
        frequent = top(mass[h], n_of(freq))
        sets = [special, special | recent, special | frequent, special | frequent | recent, set(range(T))]
        total = float(mass[h].sum())
        ok = [i for i, s in enumerate(sets) if s and sum(float(mass[h, p]) for p in s) >= threshold * total]
        best = min(ok, key=lambda i: (len(sets[i]), i))
        out.append((POLICIES[best], sets[best]))
    return out


@pytest.mark.parametrize(
    "recipe,kw",
    [
        ("fastgen:0.9", dict(threshold=0.9)),
        ("fastgen:0.5", dict(threshold=0.5)),
        ("fastgen:0.7,window=8,local=0.2,freq=6,sink=2", dict(threshold=0.7, window=8, local=0.2, freq=6, sink=2)),
        ("fastgen:0.3,local=10,freq=0.1,sink=0", dict(threshold=0.3, local=10, freq=0.1, sink=0)),
    ],
)
def test_fastgen_matches_reference(ref, recipe, kw):
    cache = kvstack.compress(ref.model, ref.ids, recipe)
    for layer, heads in enumerate(kept(cache)):
        want = fastgen_ref(ref, layer, **kw)
        assert heads == [s for _, s in want], (layer, cache.stats["fastgen"][layer], [n for n, _ in want])
        assert cache.stats["fastgen"][layer] == [n for n, _ in want]


def test_punctuation_counts_as_special(ref):
    punct = tuple(int(x) for x in ref.ids[[5, 9, 20]])
    text = "/".join(str(x) for x in punct)
    cache = kvstack.compress(ref.model, ref.ids, f"fastgen:0.4,punct={text}")
    for layer, heads in enumerate(kept(cache)):
        want = fastgen_ref(ref, layer, 0.4, punct=punct)
        assert heads == [s for _, s in want]
        assert all({0, 5, 9, 20} <= s for s in heads)


def test_heads_get_ragged_lengths_and_bytes_follow(ref):
    cache = kvstack.compress(ref.model, ref.ids, "fastgen:0.55")
    want = [tuple(len(s) for _, s in fastgen_ref(ref, layer, 0.55)) for layer in range(2)]
    assert [layer.lengths for layer in cache.layers] == want
    assert want[0] == (T, T) and len(set(want[1])) == 2  # heads of layer 1 pick different policies
    elem = torch.empty((), dtype=cache.dense_dtype).element_size()
    # layer 0 keeps everything (no positions stored); layer 1 stores K, V and an int32 position per row
    assert cache.nbytes == 2 * 2 * T * 16 * elem + (2 * 16 * elem + 4) * sum(want[1])
    by_hand = hand_cache(cache, ref.ids, ref.keys, ref.values, kept(cache))
    assert same_generation(ref.model, cache, by_hand, ref.question)


def test_choose_by_hand():
    mass = torch.tensor([0.5, 0.1, 0.1, 0.3])
    sets = [torch.tensor(x) for x in ([1, 0, 0, 0], [1, 0, 0, 1], [1, 1, 0, 0], [1, 1, 0, 1], [1, 1, 1, 1])]
    sets = [s.bool() for s in sets]
    assert choose(mass, sets, 0.5) == 0
    assert choose(mass, sets, 0.8) == 1  # 2 rows with 0.8 beat 3 rows
    assert choose(mass, sets, 0.85) == 3
    assert choose(mass, sets, 1.0) == 4
    assert choose(torch.zeros(4), sets, 0.9) == 0  # no attention at all: the cheapest non-empty set


def test_punctuation_ids_from_a_tokenizer():
    class Tok:
        vocab = ["a", ".", " ,", "b.", "\n", "?!"]

        def __len__(self):
            return len(self.vocab)

        def decode(self, ids):
            return self.vocab[ids[0]]

    assert punctuation_ids(Tok()) == [1, 2, 4, 5]


@pytest.mark.parametrize(
    "recipe,error",
    [
        ("fastgen:0", BudgetError),
        ("fastgen:1.5", BudgetError),
        ("fastgen:0.9,window=0", RecipeError),
        ("fastgen:0.9,local=-1", RecipeError),
        ("fastgen:0.9,freq=2.5", RecipeError),
        ("fastgen:0.9,sink=-1", BudgetError),
        ("fastgen:0.9,punct=a/b", RecipeError),
    ],
)
def test_bad_parameters(recipe, error):
    with pytest.raises(error, match="fastgen"):
        Recipe.parse(recipe)
