"""``fingerprint="weights"`` (issue 19 item 5): two models with one config and different weights
(a fine-tune) share the config fingerprint and so accepted each other's caches; a cache marked
with the weights fingerprint is refused by the other model in load and generate."""

from __future__ import annotations

import pytest
import torch
from wire_helpers import tiny_llama

import kvstack
from kvstack.errors import InputError, ModelError
from kvstack.hf.fingerprint import WEIGHTS_HEX, model_fingerprint

IDS = torch.randint(3, 128, (30,), generator=torch.Generator().manual_seed(4))
Q = torch.tensor([5, 6, 7])


@pytest.fixture(scope="module")
def base():
    return tiny_llama(seed=0)


@pytest.fixture(scope="module")
def tuned():
    return tiny_llama(seed=1)  # same config, other weights


def test_a_fine_tune_shares_the_config_fingerprint_but_not_the_weights_one(base, tuned):
    assert model_fingerprint(base) == model_fingerprint(tuned)
    assert model_fingerprint(base, "weights") != model_fingerprint(tuned, "weights")
    assert len(model_fingerprint(base, "weights")) == WEIGHTS_HEX
    with pytest.raises(InputError, match="fingerprint='sha'"):
        model_fingerprint(base, "sha")


def test_weights_marked_cache_is_refused_by_the_fine_tune(base, tuned, tmp_path):
    cache = kvstack.compress(base, IDS, "int8", fingerprint="weights")
    assert cache.model_fingerprint == model_fingerprint(base, "weights")
    path = tmp_path / "w.kvw"
    kvstack.save(cache, path)
    loaded = kvstack.load(path, base)
    assert torch.equal(kvstack.generate(base, loaded, Q, 4), kvstack.generate(base, cache, Q, 4))
    with pytest.raises(ModelError, match="another model"):
        kvstack.load(path, tuned)
    with pytest.raises(ModelError, match="another model"):
        kvstack.generate(tuned, cache, Q, 4)


def test_config_only_caches_behave_as_before_unless_weights_are_asked_for(base, tuned, tmp_path):
    cache = kvstack.compress(base, IDS, "int8")
    path = tmp_path / "c.kvw"
    kvstack.save(cache, path)
    kvstack.load(path, tuned)  # as before: the config is all the cache can be checked by
    kvstack.generate(tuned, cache, Q, 2)
    with pytest.raises(ModelError, match="only its model's config fingerprint"):
        kvstack.load(path, tuned, fingerprint="weights")
    with pytest.raises(ModelError, match="only its model's config fingerprint"):
        kvstack.generate(base, cache, Q, 2, fingerprint="weights")


def test_weights_changed_in_place_change_the_fingerprint():
    model = tiny_llama(seed=2)
    cache = kvstack.compress(model, IDS, "int8", fingerprint="weights")
    kvstack.generate(model, cache, Q, 2)
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)  # a training step
    with pytest.raises(ModelError, match="another model"):
        kvstack.generate(model, cache, Q, 2)
