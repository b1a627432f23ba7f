"""Moving a decoded cache to the receiver's device: every tensor moves, values and sharing survive."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import kvstack
from kvstack import wire
from kvstack.linkbench.device import cache_to, layer_to
from kvstack.linkbench.models import build_random, parse_random

TINY = "random:llama-3.1-8b,num_hidden_layers=2,hidden_size=64,intermediate_size=96,num_attention_heads=4," \
       "num_key_value_heads=2,vocab_size=300"
RECIPES = ["fp16", "int4", "int8:axis=channel", "snapkv:0.25 > int4", "kivi:2", "h2o:0.5,alloc=adakv > int2"]


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return build_random(parse_random(TINY), "cpu", seed=0)


def tensors(obj) -> list[torch.Tensor]:
    """Every tensor reachable through dataclass fields, lists, tuples and dicts."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [t for f in dataclasses.fields(obj) for t in tensors(getattr(obj, f.name))]
    if isinstance(obj, (list, tuple)):
        return [t for x in obj for t in tensors(x)]
    if isinstance(obj, dict):
        return [t for x in obj.values() for t in tensors(x)]
    return []


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_tensor_reaches_the_device(model, recipe):
    ids = torch.randint(3, 300, (200,), generator=torch.Generator().manual_seed(0))
    cache = wire.decode(wire.encode(kvstack.compress(model, ids, recipe)))  # what a receiver holds
    moved = cache_to(cache, "meta")  # a device with no data: only a real move puts a tensor there
    found = tensors(moved.layers)
    assert found and {t.device.type for t in found} == {"meta"}
    assert len(found) == len(tensors(cache.layers))
    assert moved.context_ids.device.type == "cpu"  # generate() reads the ids on the CPU


@pytest.mark.parametrize("recipe", RECIPES)
def test_moved_cache_is_equal_and_answers_the_same(model, recipe):
    ids = torch.randint(3, 300, (200,), generator=torch.Generator().manual_seed(1))
    q = torch.tensor([5, 6, 7, 8])
    cache = wire.decode(wire.encode(kvstack.compress(model, ids, recipe)))
    moved = cache_to(cache, "cpu")
    assert wire.cache_differences(moved, cache) == []
    assert torch.equal(kvstack.generate(model, moved, q, max_new_tokens=4), kvstack.generate(model, cache, q,
                                                                                           max_new_tokens=4))


def test_a_tensor_shared_by_two_containers_stays_shared(model):
    ids = torch.randint(3, 300, (100,), generator=torch.Generator().manual_seed(2))
    layer = kvstack.compress(model, ids, "fp16").layers[0]
    shared = dataclasses.replace(layer, values=layer.keys)  # keys and values: one tensor
    moved = layer_to(shared, "meta")
    assert moved.keys.data is moved.values.data and moved.keys.data.device.type == "meta"
