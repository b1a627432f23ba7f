"""Presets reproduce the published per-token cache figures; hand-computed from model cards."""

from __future__ import annotations

import pytest

from kvstack.errors import InputError
from kvstack.plan import load_spec, plan, preset_names, with_gqa, with_head_dim

REQUIRED = [
    "llama-2-7b",
    "llama-3.1-8b",
    "llama-3.1-70b",
    "llama-3.1-405b",
    "mistral-7b",
    "mixtral-8x7b",
    "qwen2.5-7b",
    "qwen3-8b",
    "phi-3-mini",
    "gemma-2-9b",
    "gemma-3-27b",
    "gemma-3n-e2b",
    "gemma-4-e2b",
    "deepseek-v2",
    "deepseek-v3",
    "gpt2",
    "smollm2-135m",
]
K128 = 131072


def test_required_presets_exist():
    assert set(REQUIRED) <= set(preset_names())


@pytest.mark.parametrize("name", sorted(set(REQUIRED) | {"deepseek-llm-67b", "mistral-7b-v0.1"}))
def test_every_preset_plans(name):
    spec = load_spec(name)
    p = plan(spec, 8192)
    assert p.total_bytes > 0 and len(p.layers) == spec.num_layers
    assert spec.params and spec.params > 10**8


@pytest.mark.parametrize(
    ("name", "bytes_per_token"),
    [
        ("deepseek-v3", 61 * (512 + 64) * 2),  # 70,272
        ("deepseek-v2", 60 * (512 + 64) * 2),
        ("llama-3.1-405b", 126 * 8 * 128 * 2 * 2),  # 516,096
        ("llama-3.1-70b", 80 * 8 * 128 * 2 * 2),
        ("llama-3.1-8b", 32 * 8 * 128 * 2 * 2),
        ("llama-2-7b", 32 * 32 * 128 * 2 * 2),  # fp16 checkpoint
        ("mistral-7b", 32 * 8 * 128 * 2 * 2),
        ("mixtral-8x7b", 32 * 8 * 128 * 2 * 2),
        ("qwen2.5-7b", 28 * 4 * 128 * 2 * 2),  # head_dim 3584 / 28
        ("qwen3-8b", 36 * 8 * 128 * 2 * 2),
        ("phi-3-mini", 32 * 32 * 96 * 2 * 2),  # MHA, head_dim 3072 / 32
        ("gemma-2-9b", 42 * 8 * 256 * 2 * 2),
        ("gpt2", 12 * 12 * 64 * 2 * 4),  # fp32
        ("smollm2-135m", 30 * 3 * 64 * 2 * 2),
        ("deepseek-llm-67b", 95 * 8 * 128 * 2 * 2),
    ],
)
def test_bytes_per_token(name, bytes_per_token):
    assert plan(load_spec(name), 1).bytes_per_token == bytes_per_token


def test_headline_mla_vs_gqa_figures():
    v3 = plan(load_spec("deepseek-v3"), K128)
    l405 = plan(load_spec("llama-3.1-405b"), K128)
    assert v3.bytes_per_token == 70_272 and l405.bytes_per_token == 516_096
    assert v3.total_bytes == 70_272 * K128
    assert l405.total_bytes == 516_096 * K128


def test_deepseek_v3_as_mha():
    v3 = load_spec("deepseek-v3")
    # the V2 paper's MHA counterpart: 2 x 128 heads x 128 dims per layer
    mha_128 = plan(with_head_dim(with_gqa(v3, 128), 128), 1).bytes_per_token
    assert mha_128 == 61 * 128 * 2 * 128 * 2 == 3_997_696
    assert round((1 - 70_272 / mha_128) * 100, 2) == 98.24
    # with DeepSeek's own head shapes: keys 128 + 64 (RoPE), values 128
    native = plan(with_gqa(v3, 128), 1).bytes_per_token
    assert native == 61 * 128 * (192 + 128) * 2 == 4_997_120


def test_deepseek_v2_published_93_3_percent():
    # DeepSeek-V2 (MLA, KV cache quantized to ~6 bits) vs DeepSeek 67B (GQA 8, bf16)
    v2 = plan(load_spec("deepseek-v2"), 1, bits=6).bytes_per_token
    d67 = plan(load_spec("deepseek-llm-67b"), 1).bytes_per_token
    assert v2 == 60 * 576 * 6 / 8 == 25_920
    assert d67 == 389_120
    assert round((1 - v2 / d67) * 100, 1) == 93.3


def test_gemma3_27b_five_to_one_at_128k():
    spec = load_spec("gemma-3-27b")
    globals_ = [layer.index for layer in spec.layers if layer.kind == "global"]
    assert globals_ == [5, 11, 17, 23, 29, 35, 41, 47, 53, 59]
    p = plan(spec, K128)
    per_token_layer = 16 * 256 * 2  # 16 KV heads x (128 + 128) x bf16
    assert p.total_bytes == 10 * K128 * per_token_layer + 52 * 1024 * per_token_layer
    assert p.total_bytes == 11_173_625_856
    all_global = 62 * K128 * per_token_layer
    assert round((1 - p.total_bytes / all_global) * 100, 1) == 83.2


def test_gemma3n_e2b_at_32k():
    spec = load_spec("gemma-3n-e2b")
    assert spec.kind_counts() == {"global": 4, "sliding": 16, "shared": 10}
    # 4 global x 32768 + 16 sliding x 512 tokens; 2 KV heads x 512 elements x 2 bytes
    assert plan(spec, 32768).total_bytes == (4 * 32768 + 16 * 512) * 2048 == 285_212_672


def test_gemma4_e2b_kv_sharing():
    spec = load_spec("gemma-4-e2b")
    assert spec.kind_counts() == {"global": 3, "sliding": 12, "shared": 20}
    sources = {layer.shares_with for layer in spec.layers if layer.kind == "shared"}
    assert sources == {13, 14}
    assert spec.layers[19].shares_with == 14 and spec.layers[15].shares_with == 13
    # global: 1 KV head x (512 + 512) x 2 B; sliding: 1 x (256 + 256) x 2 B, window 512
    assert plan(spec, K128).total_bytes == 3 * K128 * 2048 + 12 * 512 * 1024 == 811_597_824


def test_mistral_v01_sliding_window_caps_cache():
    p = plan(load_spec("mistral-7b-v0.1"), 32768)
    assert p.total_bytes == 32 * 4096 * 4096 == 536_870_912


def test_parameter_estimates_match_published_counts():
    # the estimator (used for configs without a published count) against model-card numbers
    from kvstack.plan.config import spec_from_config
    from kvstack.plan.presets import find_preset

    def estimate(name):
        return spec_from_config(find_preset(name)[1], name).params

    assert estimate("llama-3.1-8b") == 8_030_261_248
    assert estimate("gpt2") == 124_439_808
    assert abs(estimate("deepseek-v3") / 671e9 - 1) < 0.005
    assert abs(estimate("mixtral-8x7b") / 46.7e9 - 1) < 0.005


def test_preset_by_hub_id_and_case():
    assert load_spec("meta-llama/Llama-3.1-8B").name == "llama-3.1-8b"
    assert load_spec("LLAMA-3.1-8B").name == "llama-3.1-8b"


def test_unknown_preset_lists_presets():
    with pytest.raises(InputError) as info:
        load_spec("llama-9")
    assert "llama-3.1-8b" in str(info.value) and "config.json" in str(info.value)
