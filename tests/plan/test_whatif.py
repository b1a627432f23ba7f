"""What-ifs against hand counts (llama-3.1-8b: 32 layers, 32 query heads, 8 KV heads x 128)."""

from __future__ import annotations

import pytest

from kvstack.errors import InputError
from kvstack.plan import (
    apply_what_ifs,
    load_spec,
    plan,
    with_gqa,
    with_mla,
    with_shared_layers,
    with_window,
)
from kvstack.plan.whatif import parse_local_global, parse_mla

K128 = 131072
LAYER_TOKEN = 8 * 256 * 2  # one llama-3.1-8b layer, one token, bf16 = 4096 bytes


@pytest.fixture
def base():
    return load_spec("llama-3.1-8b")


def test_gqa(base):
    assert plan(with_gqa(base, 32), 1).bytes_per_token == 32 * 32 * 256 * 2 == 524_288
    assert plan(with_gqa(base, 1), 1).bytes_per_token == 32 * 1 * 256 * 2 == 16_384
    assert with_gqa(base, 32).name == "llama-3.1-8b +gqa 32"


def test_gqa_must_divide_query_heads(base):
    with pytest.raises(InputError, match="divisor of 32"):
        with_gqa(base, 3)


def test_mla(base):
    spec = with_mla(base, 512, 64)
    assert {layer.kind for layer in spec.layers} == {"latent"}
    assert plan(spec, 1).bytes_per_token == 32 * 576 * 2 == 36_864


def test_local_global_five_to_one(base):
    spec = with_window(base, 1024, (5, 1))
    assert [layer.index for layer in spec.layers if layer.kind == "global"] == [5, 11, 17, 23, 29]
    assert plan(spec, K128).total_bytes == (5 * K128 + 27 * 1024) * LAYER_TOKEN == 2_797_600_768


def test_window_alone_makes_every_layer_sliding(base):
    spec = with_window(base, 4096)
    assert plan(spec, 32768).total_bytes == 32 * 4096 * LAYER_TOKEN


def test_window_resizes_existing_sliding_layers():
    spec = with_window(load_spec("gemma-3-27b"), 4096)
    assert spec.kind_counts() == {"global": 10, "sliding": 52}
    # 16 KV heads x 256 x 2 bytes = 8192 B per token per layer
    assert plan(spec, K128).total_bytes == (10 * K128 + 52 * 4096) * 8192


def test_local_global_without_any_window_is_an_error(base):
    with pytest.raises(InputError, match="--window"):
        with_window(base, None, (5, 1))


def test_shared_layers(base):
    spec = with_shared_layers(base, 16)
    assert [layer.shares_with for layer in spec.layers[16:]] == [15] * 16
    assert plan(spec, 1).bytes_per_token == 16 * LAYER_TOKEN == 65_536
    with pytest.raises(InputError, match="at most 31"):
        with_shared_layers(base, 32)


def test_share_zero_removes_sharing():
    spec = with_shared_layers(load_spec("gemma-3n-e2b"), 0)
    assert "shared" not in spec.kind_counts()
    assert plan(spec, 1).bytes_per_token == 30 * 2 * 512 * 2 == 61_440


def test_sliding_then_sharing_combined(base):
    spec = apply_what_ifs(base, window=1024, local_global=(5, 1), share_layers=16)
    # own layers 0-15: globals 5 and 11, 14 sliding; shared sliding -> 15, shared global -> 11
    assert spec.layers[17].shares_with == 11 and spec.layers[16].shares_with == 15
    assert plan(spec, K128).total_bytes == (2 * K128 + 14 * 1024) * LAYER_TOKEN == 1_132_462_080
    assert spec.name == "llama-3.1-8b +window 1024 (5:1) +share 16"


def test_deepseek_gqa_undoes_mla():
    spec = with_gqa(load_spec("deepseek-v3"), 8)
    assert {layer.kind for layer in spec.layers} == {"global"}
    assert plan(spec, 1).bytes_per_token == 61 * 8 * (192 + 128) * 2


def test_parsers():
    assert parse_local_global("5:1") == (5, 1)
    assert parse_mla("512+64") == (512, 64)
    assert parse_mla("256") == (256, 0)
    for bad in ("5-1", "0:0"):
        with pytest.raises(InputError):
            parse_local_global(bad)
    with pytest.raises(InputError):
        parse_mla("big")
