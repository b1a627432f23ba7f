"""Teacher-forced NLL through a compressed cache: equal to a plain full-context pass for the
identity recipe (float64), and really changed by a cache that lost information."""

from dataclasses import replace

import pytest
import torch

import kvstack
from kvstack.errors import InputError
from kvstack.eval.nll import continuation_nll, full_context_nll
from kvstack.kv import DenseRows


@pytest.fixture
def llama64(tiny_model):
    return tiny_model("llama").double()


@pytest.mark.parametrize("with_question", [False, True])
def test_identity_nll_equals_full_context_forward(llama64, make_ids, with_question):
    ctx, cont = make_ids(40, seed=1), make_ids(12, seed=2)
    q = make_ids(5, seed=3) if with_question else None
    cache = kvstack.compress(llama64, ctx, "identity")
    ours, n = continuation_nll(llama64, cache, cont, q)
    ref, n_ref = full_context_nll(llama64, ctx, cont, q)
    assert n == n_ref == (12 if with_question else 11)
    assert ours == pytest.approx(ref, rel=1e-12, abs=1e-12)


def test_lossy_caches_change_the_nll(llama64, make_ids):
    ctx, cont = make_ids(48, seed=4), make_ids(16, seed=5)
    full, _ = continuation_nll(llama64, kvstack.compress(llama64, ctx, "identity"), cont)
    evicted, _ = continuation_nll(llama64, kvstack.compress(llama64, ctx, "streaming:sink=2,window=8"), cont)
    # the continuation sees 10 of 48 context rows: its NLL must move
    assert abs(evicted - full) > 1e-3
    cache = kvstack.compress(llama64, ctx, "identity")
    zeroed = cache.map_layers(lambda i, lay: replace(lay, values=DenseRows(torch.zeros_like(lay.values.decode()))))
    broken, _ = continuation_nll(llama64, zeroed, cont)
    assert abs(broken - full) > 1e-3


def test_a_one_token_continuation_without_question_is_refused(llama64, make_ids):
    cache = kvstack.compress(llama64, make_ids(10), "identity")
    with pytest.raises(InputError, match="at least 2 tokens"):
        continuation_nll(llama64, cache, make_ids(1))
