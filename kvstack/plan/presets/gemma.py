"""Gemma 2 / 3 / 3n / 4 presets: interleaved sliding-window layers and KV sharing.

Gemma 3n E2B and Gemma 4 E2B follow the published text configs (layer pattern, windows, head
sizes, shared layers are what the cache size depends on); their parameter counts are left to
the estimate (text decoder only, see params.py), so ``--weights auto`` is approximate for them.
"""

_FOUR_ONE = ["sliding_attention"] * 4 + ["full_attention"]

GEMMA = {
    "gemma-2-9b": {
        "_source": "google/gemma-2-9b",
        "_params": 9_241_705_984,
        "_note": "dtype set to bfloat16, the dtype Gemma 2 is served in",
        "model_type": "gemma2",
        "hidden_size": 3584,
        "intermediate_size": 14336,
        "num_hidden_layers": 42,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 256,
        "vocab_size": 256000,
        "max_position_embeddings": 8192,
        "sliding_window": 4096,
        "query_pre_attn_scalar": 256,
        "torch_dtype": "bfloat16",
    },
    "gemma-3-27b": {
        "_source": "google/gemma-3-27b-it",
        "_params": 27_432_406_640,
        "model_type": "gemma3",
        "torch_dtype": "bfloat16",
        "text_config": {
            "model_type": "gemma3_text",
            "hidden_size": 5376,
            "intermediate_size": 21504,
            "num_hidden_layers": 62,
            "num_attention_heads": 32,
            "num_key_value_heads": 16,
            "head_dim": 128,
            "vocab_size": 262208,
            "max_position_embeddings": 131072,
            "sliding_window": 1024,
            "sliding_window_pattern": 6,
            "query_pre_attn_scalar": 168,
            "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
        },
    },
    "gemma-3n-e2b": {
        "_source": "google/gemma-3n-E2B-it",
        "_note": "parameter count estimated (text decoder incl. per-layer embeddings)",
        "model_type": "gemma3n",
        "torch_dtype": "bfloat16",
        "text_config": {
            "model_type": "gemma3n_text",
            "hidden_size": 2048,
            "intermediate_size": [8192] * 30,
            "num_hidden_layers": 30,
            "num_attention_heads": 8,
            "num_key_value_heads": 2,
            "head_dim": 256,
            "vocab_size": 262400,
            "vocab_size_per_layer_input": 262144,
            "hidden_size_per_layer_input": 256,
            "max_position_embeddings": 32768,
            "sliding_window": 512,
            "layer_types": _FOUR_ONE * 6,
            "num_kv_shared_layers": 10,
            "laurel_rank": 64,
            "altup_num_inputs": 4,
        },
    },
    "gemma-4-e2b": {
        "_source": "google/gemma-4-E2B-it",
        "_note": (
            "dimensions from the published text_config as mirrored in public code; parameter "
            "count estimated (text decoder incl. per-layer embeddings)"
        ),
        "model_type": "gemma4",
        "dtype": "bfloat16",
        "tie_word_embeddings": True,
        "text_config": {
            "model_type": "gemma4_text",
            "hidden_size": 1536,
            "intermediate_size": 6144,
            "use_double_wide_mlp": True,
            "num_hidden_layers": 35,
            "num_attention_heads": 8,
            "num_key_value_heads": 1,
            "head_dim": 256,
            "global_head_dim": 512,
            "num_global_key_value_heads": None,
            "attention_k_eq_v": False,
            "vocab_size": 262144,
            "vocab_size_per_layer_input": 262144,
            "hidden_size_per_layer_input": 256,
            "max_position_embeddings": 131072,
            "sliding_window": 512,
            "layer_types": _FOUR_ONE * 7,
            "num_kv_shared_layers": 20,
        },
    },
}
