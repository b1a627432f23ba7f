"""A kvstack cache cut into LMCache chunks and rebuilt from them (no LMCache needed): the round trip
is exact and generates what the cache does, only full chunks are cut, and a cache that dropped
tokens, chunks of another model or of other tokens, and a bad chunk size are InputErrors."""

from __future__ import annotations

import pytest
import torch

import kvstack
from kvstack.errors import InputError
from kvstack.integrations.lmcache.chunks import to_chunks, with_chunks


@pytest.fixture
def setup(tiny_model, make_ids):
    model = tiny_model("llama")
    ids = make_ids(100)
    return model, ids, kvstack.compress(model, ids[:96], recipe="identity")


def test_round_trip_is_exact_and_generates_the_same(setup, make_ids):
    model, ids, cache = setup
    chunks = to_chunks(kvstack.compress(model, ids, recipe="identity"), 32)  # 100 tokens: 3 full chunks
    assert [list(c.shape) for c in chunks] == [[2, 2, 32, 32]] * 3  # 2 KV heads x 16 channels
    back = with_chunks(cache, [c.clone() for c in chunks])
    for got, want in zip(back.layers, cache.layers, strict=True):
        assert torch.equal(got.keys.decode(), want.keys.decode())
        assert torch.equal(got.values.decode(), want.values.decode())
    question = make_ids(5, seed=1)
    assert torch.equal(kvstack.generate(model, back, question, 6), kvstack.generate(model, cache, question, 6))


def test_dtype_and_a_changed_chunk_reach_the_cache(setup):
    model, _, cache = setup
    chunks = to_chunks(cache, 32, torch.bfloat16)
    assert all(c.dtype == torch.bfloat16 for c in chunks)
    chunks[1][1, 0, 0, :16] = 7.0  # values of layer 0, token 32, head 0
    back = with_chunks(cache, chunks)
    assert back.layers[0].values.decode().dtype == cache.layers[0].values.decode().dtype
    assert torch.all(back.layers[0].values.decode()[32] == 7.0)  # head-major rows: head 0's token 32
    assert not torch.equal(back.layers[0].values.decode(), cache.layers[0].values.decode())


def test_bad_input_is_an_input_error(setup):
    model, ids, cache = setup
    chunks = to_chunks(cache, 32)
    with pytest.raises(InputError, match="keeps"):
        to_chunks(kvstack.compress(model, ids, recipe="streaming:sink=4,window=32"), 32)
    with pytest.raises(InputError, match="positive"):
        to_chunks(cache, 0)
    with pytest.raises(InputError, match="do not fit"):
        with_chunks(cache, [c[:, :1] for c in chunks])  # one layer of two
    with pytest.raises(InputError, match="do not fit"):
        with_chunks(cache, [])
    with pytest.raises(InputError, match="hold 64 tokens and the cache 96"):
        with_chunks(cache, chunks[:2])
    with pytest.raises(InputError, match="KVCache"):
        to_chunks(chunks, 32)
