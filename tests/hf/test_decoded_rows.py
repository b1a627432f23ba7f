"""kvstack.hf.decoded_rows: decoding each compressed segment once per scope (what `kvstack eval` does).

Why: the eval harness decodes with the memo for speed, so its answers must be exactly the ones a
user's run (no memo: packed rows decoded at every step) produces - for a plain quantizer, a
selection, and a stage whose decode policy adds segments while generating (KIVI) - and the memo
must really cut the decoding and be gone after its scope (no dense copy outlives it).
"""

from __future__ import annotations

import pytest
import torch

import kvstack
from kvstack.eval.nll import continuation_nll
from kvstack.hf import decoded_rows
from kvstack.hf.decoded_rows import reuse_decoded_rows
from kvstack.kv import KVLayer


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model("llama")


def count_decodes(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = KVLayer.padded

    def counted(self):
        calls.append(1)
        return real(self)

    monkeypatch.setattr(KVLayer, "padded", counted)
    return calls


@pytest.mark.parametrize("recipe", ["int4", "snapkv:0.5,window=4 > int4:vbits=2,vaxis=token", "kivi:2"])
def test_same_tokens_and_nll_with_and_without_the_memo(model, make_ids, recipe):
    ids, question = make_ids(96, seed=1), make_ids(6, seed=2)
    cache = kvstack.compress(model, ids, recipe, question_ids=question)
    plain = kvstack.generate(model, cache, question, 24, min_new_tokens=24)
    plain_nll = continuation_nll(model, cache, make_ids(8, seed=3), question)
    with reuse_decoded_rows():
        memo = kvstack.generate(model, cache, question, 24, min_new_tokens=24)
        memo_nll = continuation_nll(model, cache, make_ids(8, seed=3), question)
    assert plain.numel() == 24 and torch.equal(plain, memo)
    assert plain_nll == memo_nll


def test_each_segment_decoded_once_per_scope(model, make_ids, monkeypatch):
    ids, question = make_ids(80, seed=4), make_ids(5, seed=5)
    cache = kvstack.compress(model, ids, "int4")
    calls = count_decodes(monkeypatch)
    kvstack.generate(model, cache, question, 8, min_new_tokens=8)
    per_step = len(calls)
    calls.clear()
    with reuse_decoded_rows():
        kvstack.generate(model, cache, question, 8, min_new_tokens=8)
        continuation_nll(model, cache, make_ids(4, seed=6), question)  # reuses the generation's rows
    layers = len(cache.layers)
    assert per_step >= 8 * layers  # without the memo: every layer decodes at every step
    assert len(calls) == layers
    assert decoded_rows._MEMO.get() is None  # the dense rows go with the scope
