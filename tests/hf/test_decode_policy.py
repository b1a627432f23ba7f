"""Decode policies (kvstack.decode_policy): a stage's decoding behaviour is an object the HF cache
calls after every step; the cache reads no stage's meta keys. Streaming's budget and KIVI's block
quantization are policies; a new one plugs in by registering a meta key."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import kvstack
from kvstack.decode_policy import DecodePolicy, decode_policies, register_decode_policy, unregister_decode_policy
from kvstack.errors import ConfigError
from kvstack.hf.attention import enable
from kvstack.hf.cache import CompressedCache
from kvstack.hf.compat import cache_kwargs
from kvstack.stages.quant.kivi import DECODE_QUANTIZE, KiviBlocks
from kvstack.stages.select.streaming import DECODE_BUDGET, StreamingBudget

T = 24


def test_meta_keys_become_the_stages_policies():
    [budget] = decode_policies({DECODE_BUDGET: (4, 8), "other": 1})
    assert isinstance(budget, StreamingBudget) and (budget.sink, budget.window) == (4, 8)
    [kivi] = decode_policies({DECODE_QUANTIZE: ("kivi:2,group=4,residual=0", 8, 4)})
    assert isinstance(kivi, KiviBlocks) and (kivi.residual, kivi.block) == (8, 4)
    assert decode_policies({}) == [] and decode_policies({DECODE_BUDGET: None}) == []


@pytest.mark.parametrize(("recipe", "kinds"), [
    ("streaming:sink=2,window=8,decode=true", [StreamingBudget]),
    ("kivi:2,group=4,residual=4", [KiviBlocks]),
    ("streaming:sink=2,window=8,decode=true > kivi:2,group=4,residual=4", [KiviBlocks, StreamingBudget]),
    ("streaming:sink=2,window=8 > int8", []),
])
def test_compressed_layers_carry_their_stages_policies(recipe, kinds, tiny_model, make_ids):
    model = tiny_model("llama")
    kv = kvstack.compress(model, make_ids(T, seed=1), recipe)
    for layer in CompressedCache(kv, torch.float32).layers:
        assert sorted(type(p).__name__ for p in layer.policies) == sorted(k.__name__ for k in kinds)


class _KeepNewest(DecodePolicy):
    """A policy from outside kvstack: keep only the newest ``n`` generated tokens; records its calls."""

    calls: list[str] = []

    def __init__(self, n: int) -> None:
        self.n = n

    def evict(self, layer) -> None:
        self.calls.append("evict")
        keep_tail = torch.arange(layer.tail_length) >= layer.tail_length - self.n
        layer.drop_rows([torch.ones(seg.row_positions().numel(), dtype=torch.bool) for seg in layer.segments],
                        keep_tail)

    def compress(self, layer) -> None:
        self.calls.append("compress")


@pytest.fixture
def keep_newest():
    register_decode_policy("test_keep_newest", _KeepNewest)
    _KeepNewest.calls = []
    yield
    unregister_decode_policy("test_keep_newest")


@torch.no_grad()
def test_a_registered_policy_drives_the_cache(keep_newest, tiny_model, make_ids):
    model = tiny_model("llama")
    kv = kvstack.compress(model, make_ids(T, seed=2), "int8")
    kv = kv.map_layers(lambda i, layer: replace(layer, meta={**layer.meta, "test_keep_newest": 2}))
    cache = CompressedCache(kv, torch.float32)
    steps = 5
    with enable(model):
        for step in range(steps):
            model(input_ids=torch.tensor([[5 + step]]), **cache_kwargs(cache), use_cache=True)
    for layer in cache.layers:
        assert layer.tail_length == 2 and layer.tail_pos.tolist() == [T + steps - 2, T + steps - 1]
        assert layer.base.max_length == T  # the context is untouched
    assert _KeepNewest.calls == ["evict", "compress"] * (steps * len(cache.layers))


def test_a_meta_key_has_one_policy_and_a_refused_one_changes_nothing():
    with pytest.raises(ConfigError, match="registered twice"):
        register_decode_policy(DECODE_BUDGET, _KeepNewest)
    assert isinstance(decode_policies({DECODE_BUDGET: (1, 2)})[0], StreamingBudget)
