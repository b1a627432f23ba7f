"""Bad input for batches: each refused with a typed error before any model work, the batch intact.

Devices: the CI machine has no GPU, so a second device is torch's ``meta`` device (tensors with a
shape and no data) - the same check refuses ``cuda:0`` beside ``cpu``.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import kvstack
from kvstack.errors import BudgetError, InputError, ModelError
from kvstack.kv import DenseRows
from kvstack.kv_batch import KVBatch


@pytest.fixture
def setup(tiny_model, make_ids):
    model = tiny_model("llama")
    ctxs = [make_ids(n, seed=n) for n in (20, 12, 30)]
    qs = [make_ids(n, seed=70 + n) for n in (3, 5, 2)]
    return model, ctxs, qs, kvstack.compress(model, ctxs, "identity")


def _on_meta(cache):
    """The same cache with its rows on the ``meta`` device."""
    def move(_, layer):
        keys, values = (DenseRows(enc.data.to("meta")) for enc in (layer.keys, layer.values))
        return replace(layer, keys=keys, values=values)

    return cache.map_layers(move)


def _still_works(model, batch, qs):
    got = kvstack.generate(model, batch, qs, max_new_tokens=3)
    assert [g.tolist() for g in got] == [
        kvstack.generate(model, batch[i], qs[i], max_new_tokens=3).tolist() for i in range(len(batch))
    ]


def test_batch_built_for_another_model(setup, tiny_model, make_ids):
    model, ctxs, qs, batch = setup
    qwen = tiny_model("qwen2")
    with pytest.raises(ModelError, match="sequence 0 of the batch.*compress the context again with this model"):
        kvstack.generate(qwen, batch, qs, max_new_tokens=3)
    deeper = tiny_model("llama", num_hidden_layers=3)
    with pytest.raises(ModelError, match="compress the context again"):
        kvstack.generate(deeper, batch, qs, max_new_tokens=3)
    # one sequence from another model in a batch: refused when the batch is made
    foreign = kvstack.compress(qwen, make_ids(15), "identity")
    with pytest.raises(ModelError, match="sequence 2 of the batch was built by another model than sequence 0"):
        KVBatch([batch[0], batch[1], foreign])
    # a sequence whose fingerprint was changed after the batch was made is named at generate
    batch.caches[1] = replace(batch[1], model_fingerprint="0" * 16)
    with pytest.raises(ModelError, match="sequence 1 of the batch"):
        kvstack.generate(model, batch, qs, max_new_tokens=3)


def test_question_list_of_another_length(setup):
    model, ctxs, qs, batch = setup
    for wrong in (qs[:2], [*qs, qs[0]]):
        with pytest.raises(InputError, match=f"has {len(wrong)} questions but the batch has 3 sequences"):
            kvstack.generate(model, batch, wrong, max_new_tokens=3)
        with pytest.raises(InputError, match=f"has {len(wrong)} questions but the batch has 3 sequences"):
            kvstack.compress(model, ctxs, "q2c:0.5", question_ids=wrong)
    with pytest.raises(InputError, match="must be a list of 3 questions"):
        kvstack.generate(model, batch, qs[0], max_new_tokens=3)  # one question for a batch
    with pytest.raises(InputError, match="pass one question per sequence"):
        kvstack.generate(model, batch, None, max_new_tokens=3)
    with pytest.raises(InputError, match="this cache holds one sequence"):
        kvstack.generate(model, batch[0], qs, max_new_tokens=3)  # a list of questions for one sequence
    with pytest.raises(InputError, match=r"question_ids\[1\] is empty"):
        kvstack.generate(model, batch, [qs[0], [], qs[2]], max_new_tokens=3)
    _still_works(model, batch, qs)


def test_mixed_device_batch(setup):
    model, ctxs, qs, batch = setup
    on_meta = ctxs[1].to("meta")
    with pytest.raises(InputError, match=r"different devices \(.*context_ids\[1\] on meta"):
        kvstack.compress(model, [ctxs[0], on_meta, ctxs[2]], "identity")
    with pytest.raises(InputError, match=r"different devices \(.*question_ids\[2\] on meta"):
        kvstack.generate(model, batch, [qs[0], qs[1], qs[2].to("meta")], max_new_tokens=3)
    with pytest.raises(InputError, match="sequence 1: meta.*a batch decodes on one device"):
        KVBatch([batch[0], _on_meta(batch[1]), batch[2]])
    _still_works(model, batch, qs)


def test_a_sequence_the_recipe_cannot_compress_is_named(setup, make_ids):
    model, ctxs, _, _ = setup
    with pytest.raises(BudgetError, match=r"context_ids\[1\] of the batch: snapkv"):
        kvstack.compress(model, [ctxs[0], make_ids(6), ctxs[2]], "snapkv:0.5,window=4")


def test_not_a_batch_of_caches(setup):
    _, _, _, batch = setup
    with pytest.raises(InputError, match="at least one sequence"):
        KVBatch([])
    with pytest.raises(InputError, match="sequence 1 of the batch is a Tensor"):
        KVBatch([batch[0], torch.zeros(3)])


def test_one_sequence_too_long_for_the_model(setup, make_ids):
    model, _, qs, batch = setup  # tiny models handle 256 positions
    with pytest.raises(InputError, match="sequence 2: 30 context .* needs 262 positions"):
        kvstack.generate(model, batch, [qs[0], qs[1], make_ids(2)], max_new_tokens=230)


def test_several_answers_per_sequence_are_refused(setup):
    model, _, qs, batch = setup
    with pytest.raises(ModelError, match="num_return_sequences must be 1"):
        kvstack.generate(model, batch, qs, max_new_tokens=3, do_sample=True, num_return_sequences=2)
    with pytest.raises(ModelError, match="num_return_sequences must be 1"):
        kvstack.generate(model, batch[0], qs[0], max_new_tokens=3, do_sample=True, num_return_sequences=2)


def test_save_a_batch_one_sequence_at_a_time(setup, tmp_path):
    model, _, qs, batch = setup
    with pytest.raises(InputError, match=r"holds one sequence and this is a batch of 3.*kvstack.save\(batch\[i\]"):
        kvstack.save(batch, tmp_path / "all.kvw")
    assert list(tmp_path.iterdir()) == []  # no file, no temporary left behind
    for i in range(len(batch)):
        kvstack.save(batch[i], tmp_path / f"doc{i}.kvw")
    loaded = KVBatch([kvstack.load(tmp_path / f"doc{i}.kvw", model) for i in range(len(batch))])
    assert loaded.nbytes == batch.nbytes
    assert [t.tolist() for t in kvstack.generate(model, loaded, qs, max_new_tokens=4)] == [
        t.tolist() for t in kvstack.generate(model, batch, qs, max_new_tokens=4)
    ]
