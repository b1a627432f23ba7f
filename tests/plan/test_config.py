"""config.json -> per-layer cache geometry, for every architecture kind, against hand counts.

Bytes per token below are layers x KV heads x (key dim + value dim) x bytes per element.
"""

from __future__ import annotations

import json

import pytest

from kvstack.errors import ConfigError, InputError
from kvstack.plan import load_spec, plan
from kvstack.plan.config import read_config

BF16 = 2


def llama(**overrides):
    config = {
        "model_type": "llama",
        "hidden_size": 512,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "intermediate_size": 1024,
        "vocab_size": 1000,
        "torch_dtype": "bfloat16",
    }
    config.update(overrides)
    return config


def write(tmp_path, config, name="config.json"):
    path = tmp_path / name
    path.write_text(json.dumps(config))
    return path


def test_mha_when_num_key_value_heads_absent_for_llama():
    spec = load_spec(llama())
    # 4 layers x 8 KV heads (= query heads) x (64 + 64) x 2 bytes; head_dim = 512 // 8
    assert plan(spec, 1).bytes_per_token == 4 * 8 * 128 * BF16 == 8192
    assert plan(spec, 100).total_bytes == 819_200
    assert any("MHA" in note for note in spec.notes)


def test_gqa_and_explicit_head_dim():
    spec = load_spec(llama(num_key_value_heads=2, head_dim=128))
    assert [layer.kind for layer in spec.layers] == ["global"] * 4
    assert plan(spec, 1).bytes_per_token == 4 * 2 * 256 * BF16 == 4096


def test_config_file_and_directory(tmp_path):
    path = write(tmp_path, llama(num_key_value_heads=4))
    by_file, by_dir = load_spec(path), load_spec(tmp_path)
    assert plan(by_file, 10).total_bytes == plan(by_dir, 10).total_bytes == 10 * 4 * 4 * 128 * 2
    assert by_file.name == tmp_path.name


def test_mistral_without_num_key_value_heads_is_an_error_naming_the_field():
    config = llama(model_type="mistral", sliding_window=None)
    with pytest.raises(ConfigError, match="num_key_value_heads") as info:
        load_spec(config)
    assert "8" in str(info.value)  # quotes transformers' default instead of assuming it


def test_qwen3_without_head_dim_is_an_error_naming_the_field():
    config = llama(model_type="qwen3", num_key_value_heads=2)
    with pytest.raises(ConfigError, match="'head_dim'"):
        load_spec(config)


def test_missing_layer_count_names_the_field():
    config = llama()
    del config["num_hidden_layers"]
    with pytest.raises(ConfigError, match="num_hidden_layers"):
        load_spec(config)


def test_unknown_model_type_lists_supported_ones():
    with pytest.raises(ConfigError, match="'mamba'") as info:
        load_spec(llama(model_type="mamba"))
    assert "llama" in str(info.value) and "deepseek_v3" in str(info.value)


def test_mistral_sliding_window_on_every_layer():
    spec = load_spec(llama(model_type="mistral", num_key_value_heads=2, sliding_window=16))
    assert [layer.kind for layer in spec.layers] == ["sliding"] * 4
    assert [lay.tokens_held for lay in plan(spec, 100).layers] == [16] * 4
    assert [lay.tokens_held for lay in plan(spec, 10).layers] == [10] * 4
    # 4 layers x 16 tokens x 2 heads x 128 elements x 2 bytes
    assert plan(spec, 100).total_bytes == 4 * 16 * 2 * 128 * 2


def test_mistral_without_sliding_window_key_is_an_error():
    with pytest.raises(ConfigError, match="sliding_window"):
        load_spec(llama(model_type="mistral", num_key_value_heads=2))


def test_qwen2_sliding_only_above_max_window_layers_when_enabled():
    base = llama(model_type="qwen2", num_key_value_heads=2, sliding_window=32, max_window_layers=2)
    off = load_spec(base)
    on = load_spec({**base, "use_sliding_window": True})
    assert [layer.kind for layer in off.layers] == ["global"] * 4
    assert [layer.kind for layer in on.layers] == ["global", "global", "sliding", "sliding"]


def test_qwen_moe_sliding_rules():
    base = llama(
        num_key_value_heads=2, sliding_window=32, max_window_layers=3, use_sliding_window=True
    )
    q2 = load_spec({**base, "model_type": "qwen2_moe"})
    q3 = load_spec({**base, "model_type": "qwen3_moe"})
    # qwen2_moe: even layers below max_window_layers; qwen3_moe: every layer
    assert [layer.kind for layer in q2.layers] == ["sliding", "global", "sliding", "global"]
    assert [layer.kind for layer in q3.layers] == ["sliding"] * 4


def test_gemma2_alternates_sliding_and_global():
    config = llama(model_type="gemma2", num_key_value_heads=2, head_dim=64, sliding_window=8)
    spec = load_spec(config)
    assert [layer.kind for layer in spec.layers] == ["sliding", "global"] * 2
    # context 20: sliding layers hold 8, global 20; 2 heads x 128 x 2 bytes = 512 B/token/layer
    assert plan(spec, 20).total_bytes == (8 + 20 + 8 + 20) * 512


def test_gemma2_sliding_layers_need_a_window():
    with pytest.raises(ConfigError, match="sliding_window"):
        load_spec(llama(model_type="gemma2", num_key_value_heads=2, head_dim=64))


def test_gemma3_pattern_and_layer_types():
    base = llama(
        model_type="gemma3_text",
        num_key_value_heads=2,
        head_dim=64,
        num_hidden_layers=6,
        sliding_window=4,
    )
    patterned = load_spec({**base, "sliding_window_pattern": 3})
    assert [i for i, lay in enumerate(patterned.layers) if lay.kind == "global"] == [2, 5]
    defaulted = load_spec(base)  # transformers' default pattern 6: only layer 5 global
    assert [lay.kind for lay in defaulted.layers] == ["sliding"] * 5 + ["global"]
    assert any("pattern of 6" in note for note in defaulted.notes)
    explicit = load_spec({**base, "layer_types": ["full_attention", "sliding_attention"] * 3})
    assert [lay.kind for lay in explicit.layers] == ["global", "sliding"] * 3


def test_bad_layer_type_is_an_error():
    with pytest.raises(ConfigError, match="linear_attention"):
        load_spec(llama(num_key_value_heads=2, layer_types=["linear_attention"] * 4))


def test_nested_text_config_with_outer_dtype():
    config = {
        "model_type": "gemma3",
        "torch_dtype": "float16",
        "text_config": {
            "model_type": "gemma3_text",
            "hidden_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 1,
            "head_dim": 32,
            "sliding_window": 4,
            "layer_types": ["sliding_attention", "full_attention"],
        },
    }
    spec = load_spec(config)
    assert spec.model_type == "gemma3_text" and spec.dtype == "fp16"
    # context 10: layer 0 holds 4 tokens, layer 1 holds 10; 1 head x 64 elements x 2 bytes
    assert plan(spec, 10).total_bytes == (4 + 10) * 64 * 2


def test_generic_multimodal_wrapper_uses_text_config_model_type():
    config = {
        "model_type": "llava",
        "dtype": "bfloat16",
        "text_config": llama(num_key_value_heads=2),
    }
    spec = load_spec(config)
    assert spec.model_type == "llama" and spec.dtype == "bf16"
    assert plan(spec, 1).bytes_per_token == 4 * 2 * 128 * 2


def test_gemma3n_shared_layers_reuse_last_layer_of_same_type():
    types = ["full_attention" if (i + 1) % 5 == 0 else "sliding_attention" for i in range(10)]
    config = llama(
        model_type="gemma3n_text",
        num_hidden_layers=10,
        num_key_value_heads=2,
        head_dim=64,
        sliding_window=4,
        layer_types=types,
        num_kv_shared_layers=4,
    )
    spec = load_spec(config)
    assert [lay.shares_with for lay in spec.layers] == [None] * 6 + [5, 5, 5, 4]
    assert [lay.kind for lay in spec.layers][6:] == ["shared"] * 4
    p = plan(spec, 100)
    assert [lay.tokens_held for lay in p.layers][6:] == [0] * 4
    # own layers: 0-3 and 5 sliding (4 tokens), 4 global (100); 2 heads x 128 x 2 B = 512
    assert p.total_bytes == (5 * 4 + 100) * 512


def test_gemma3n_needs_num_kv_shared_layers():
    config = llama(model_type="gemma3n_text", num_key_value_heads=2, head_dim=64, sliding_window=4)
    with pytest.raises(ConfigError, match="num_kv_shared_layers"):
        load_spec(config)


def gemma4(**overrides):
    config = llama(
        model_type="gemma4_text",
        num_hidden_layers=5,
        num_key_value_heads=1,
        head_dim=256,
        global_head_dim=512,
        sliding_window=8,
        layer_types=["sliding_attention"] * 4 + ["full_attention"],
    )
    config.update(overrides)
    return config


def test_gemma4_global_layers_use_global_head_dim():
    spec = load_spec(gemma4())
    assert [lay.k_head_dim for lay in spec.layers] == [256] * 4 + [512]
    # sliding: 1 x (256 + 256) x 2 B = 1024 B/token; global: 1 x (512 + 512) x 2 B = 2048
    assert plan(spec, 1).bytes_per_token == 4 * 1024 + 2048


def test_gemma4_k_eq_v_uses_global_kv_heads_and_last_layer_is_global():
    spec = load_spec(
        gemma4(
            attention_k_eq_v=True,
            num_global_key_value_heads=4,
            layer_types=["sliding_attention"] * 5,
        )
    )
    assert spec.layers[-1].kind == "global" and spec.layers[-1].kv_heads == 4
    assert spec.layers[0].kv_heads == 1


def test_gemma4_needs_global_head_dim():
    config = gemma4()
    del config["global_head_dim"]
    with pytest.raises(ConfigError, match="global_head_dim"):
        load_spec(config)


def test_per_layer_config_overrides_head_dim():
    spec = load_spec(llama(num_key_value_heads=2, per_layer_config={"3": {"head_dim": 256}}))
    assert [lay.k_head_dim for lay in spec.layers] == [64, 64, 64, 256]


def mla(**overrides):
    config = {
        "model_type": "deepseek_v3",
        "hidden_size": 1024,
        "num_hidden_layers": 3,
        "num_attention_heads": 16,
        "kv_lora_rank": 512,
        "qk_rope_head_dim": 64,
        "qk_nope_head_dim": 128,
        "v_head_dim": 128,
        "torch_dtype": "bfloat16",
    }
    config.update(overrides)
    return config


def test_mla_caches_latent_plus_rope_key():
    spec = load_spec(mla())
    assert [lay.kind for lay in spec.layers] == ["latent"] * 3
    # 3 layers x (512 + 64) x 2 bytes, independent of the 16 heads
    assert plan(spec, 1).bytes_per_token == 3 * 576 * 2 == 3456
    assert plan(spec, 1000).total_bytes == 3_456_000


def test_mla_needs_kv_lora_rank():
    config = mla()
    del config["kv_lora_rank"]
    with pytest.raises(ConfigError, match="kv_lora_rank"):
        load_spec(config)


def test_gpt2_naming():
    config = {
        "model_type": "gpt2",
        "n_layer": 2,
        "n_head": 4,
        "n_embd": 256,
        "vocab_size": 100,
        "n_positions": 64,
        "torch_dtype": "float32",
    }
    spec = load_spec(config)
    # 2 layers x 4 heads x (64 + 64) x 4 bytes (fp32)
    assert plan(spec, 1).bytes_per_token == 2 * 4 * 128 * 4 == 4096
    assert spec.max_position_embeddings == 64
    del config["n_head"]
    with pytest.raises(ConfigError, match="n_head"):
        load_spec(config)


def test_config_without_dtype_needs_dtype():
    config = llama(num_key_value_heads=2)
    del config["torch_dtype"]
    spec = load_spec(config)
    with pytest.raises(ConfigError, match="--dtype"):
        plan(spec, 10)
    assert plan(spec, 10, dtype="fp16").total_bytes == 10 * 4 * 2 * 128 * 2


def test_quantized_checkpoint_weight_bits():
    assert load_spec(mla(quantization_config={"quant_method": "fp8"})).weight_bits == 8
    assert (
        load_spec(llama(quantization_config={"bits": 4, "quant_method": "gptq"})).weight_bits == 4
    )


def test_read_config_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_config(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="JSON"):
        read_config(bad)
    with pytest.raises(InputError, match="does not exist"):
        load_spec(str(tmp_path / "missing.json"))
