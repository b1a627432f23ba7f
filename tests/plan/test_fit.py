"""Longest context / largest batch next to the weights: exact integer arithmetic."""

from __future__ import annotations

import pytest

from kvstack.errors import BudgetError, ConfigError
from kvstack.plan import load_spec, max_batch, max_context, weight_bytes

GIB = 2**30
LLAMA8_WEIGHTS = 8_030_261_248 * 2  # published parameter count x bf16


def test_auto_weights():
    assert weight_bytes(load_spec("llama-3.1-8b"), "auto") == LLAMA8_WEIGHTS
    assert weight_bytes(load_spec("deepseek-v3"), "auto") == 671_000_000_000  # fp8 checkpoint
    assert weight_bytes(load_spec("gpt2"), "auto") == 124_439_808 * 4
    assert weight_bytes(load_spec("gpt2"), "1GB") == 10**9


def test_max_context_llama_24gib():
    spec = load_spec("llama-3.1-8b")
    budget = 24 * GIB - LLAMA8_WEIGHTS  # 9,709,281,280 bytes for the cache
    assert max_context(spec, "24GiB", "auto") == budget // 131_072 == 74_075
    assert max_context(spec, "24GiB", "auto", batch=2) == budget // 262_144 == 37_037


def test_max_context_with_given_weights_and_dtype():
    spec = load_spec("llama-3.1-8b")
    budget = 24 * GIB - 16 * 10**9
    assert max_context(spec, 24 * GIB, "16GB", dtype="int4") == budget // 32_768


def test_max_batch():
    spec = load_spec("llama-3.1-8b")
    budget = 24 * GIB - LLAMA8_WEIGHTS
    assert max_batch(spec, "24GiB", "auto", context=8192) == budget // GIB == 9
    assert max_batch(spec, "24GiB", "auto", context=131072) == 0


def test_max_context_with_sliding_layers_is_exact():
    spec = load_spec("gemma-3-27b")
    # past 1024 tokens, each extra token costs only the 10 global layers: 10 x 8192 bytes
    fixed = 52 * 1024 * 8192
    memory = 10**9 + fixed + 10 * 8192 * 50_000
    assert max_context(spec, memory, 10**9) == 50_000
    assert max_context(spec, memory + 10 * 8192 - 1, 10**9) == 50_000
    assert max_context(spec, memory + 10 * 8192, 10**9) == 50_001


def test_cache_that_stops_growing_is_unbounded():
    assert max_context(load_spec("mistral-7b-v0.1"), "24GiB", "auto") is None
    llama = load_spec("llama-3.1-8b")
    assert max_context(llama, "24GiB", "auto", recipe="streaming:sink=4,window=508") is None


def test_not_even_one_token():
    spec = load_spec("llama-3.1-8b")
    assert max_context(spec, 10**9 + 100, 10**9) == 0


def test_weights_larger_than_device_is_a_budget_error():
    with pytest.raises(BudgetError, match="do not fit") as info:
        max_context(load_spec("llama-3.1-70b"), "80GB", "auto")
    assert "80GB" not in str(info.value) and "74.51 GiB" in str(info.value)
    with pytest.raises(BudgetError):
        max_batch(load_spec("llama-3.1-8b"), "8GiB", "auto", context=1024)


def test_auto_weights_need_a_parameter_count():
    config = {
        "model_type": "llama",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "torch_dtype": "bfloat16",
    }  # no vocab_size
    with pytest.raises(ConfigError, match="--weights"):
        max_context(load_spec(config), "1GiB", "auto")
    assert max_context(load_spec(config), "1GiB", "1MiB") == (GIB - 2**20) // (
        2 * 4 * (16 + 16) * 2
    )
