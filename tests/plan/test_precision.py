"""Bits per element counted exactly, group overheads, dtype errors."""

from __future__ import annotations

import pytest

from kvstack.errors import InputError
from kvstack.plan import load_spec, plan

# llama-3.1-8b: 32 layers x 8 KV heads x (128 + 128) = 65,536 elements per token
ELEMENTS = 32 * 8 * 256


@pytest.mark.parametrize(
    ("dtype", "bits"),
    [
        ("fp32", 32),
        ("bf16", 16),
        ("float16", 16),
        ("fp8", 8),
        ("int8", 8),
        ("int4", 4),
        ("int2", 2),
    ],
)
def test_dtype_bits(dtype, bits):
    assert plan(load_spec("llama-3.1-8b"), 1, dtype=dtype).bytes_per_token == ELEMENTS * bits / 8


def test_group_size_adds_fp16_scale_and_zero_per_group():
    p = plan(load_spec("llama-3.1-8b"), 1, dtype="int4", group_size=64)
    # each 128-element head vector: 128 x 4 bits + 2 groups x (16 + 16) bits = 576 bits
    assert p.bytes_per_token == 32 * 16 * 576 / 8 == 36_864


def test_groups_do_not_span_head_vectors():
    p = plan(load_spec("llama-3.1-8b"), 1, dtype="int4", group_size=100)
    # ceil(128 / 100) = 2 groups per vector, same as group 64
    assert p.bytes_per_token == 36_864


def test_bits_override():
    assert plan(load_spec("deepseek-v2"), 1, bits=6).bytes_per_token == 60 * 576 * 6 / 8


def test_bytes_round_up_once_per_layer():
    config = {
        "model_type": "llama",
        "hidden_size": 3,
        "num_hidden_layers": 1,
        "num_attention_heads": 1,
        "torch_dtype": "bfloat16",
    }
    spec = load_spec(config)
    # 1 head x (3 + 3) elements x 3 bits x 3 tokens = 54 bits -> 7 bytes
    assert plan(spec, 3, bits=3).total_bytes == 7


def test_bad_dtype_lists_choices():
    with pytest.raises(InputError, match="int5") as info:
        plan(load_spec("llama-3.1-8b"), 1, dtype="int5")
    assert "bf16" in str(info.value) and "int4" in str(info.value)


def test_group_size_refused_for_float_dtypes():
    with pytest.raises(InputError, match="group-size"):
        plan(load_spec("llama-3.1-8b"), 1, dtype="bf16", group_size=64)
