"""Facts about a Hugging Face causal LM that compression needs, read once from its config."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import torch

from kvstack.errors import InputError, ModelError
from kvstack.hf.compat import portable_config


@dataclass(frozen=True)
class ModelInfo:
    num_layers: int
    num_query_heads: int
    num_kv_heads: int
    head_dim: int
    sliding_windows: tuple[int | None, ...]  # per layer: window W, or None for global attention
    dtype: torch.dtype
    model_type: str
    fingerprint: str

    @property
    def group_size(self) -> int:
        return self.num_query_heads // self.num_kv_heads


# Runtime switches and bookkeeping that do not change what the model computes into its cache.
_VOLATILE = {
    "use_cache", "output_attentions", "output_hidden_states", "return_dict", "transformers_version",
    "dtype", "torch_dtype", "_attn_implementation", "_attn_implementation_internal", "architectures",
    "_name_or_path", "chunk_size_feed_forward", "tie_word_embeddings",
}


def _config_fingerprint(config) -> str:
    """Hash of what shapes the cache (geometry, RoPE, vocabulary), not of runtime switches, and
    the same under every supported transformers release (:func:`kvstack.hf.compat.portable_config`)."""
    try:
        items = {k: v for k, v in portable_config(config.to_dict()).items() if k not in _VOLATILE}
        text = json.dumps(items, sort_keys=True, default=str)
    except Exception:  # noqa: BLE001 - a config that cannot serialise still gets a (weaker) id
        text = repr(config)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def context_limit(model) -> int | None:
    """The longest sequence the model was built for (``max_position_embeddings``), or None if unstated."""
    config = getattr(model, "config", None)
    text = config.get_text_config(decoder=True) if config is not None else None
    limit = getattr(text, "max_position_embeddings", None)
    return int(limit) if isinstance(limit, int) and limit > 0 else None


def check_context_window(model, tokens: int, what: str) -> None:
    """Raise InputError before any work if ``tokens`` exceed the model's context window."""
    limit = context_limit(model)
    if limit is not None and tokens > limit:
        name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
        raise InputError(
            f"{what} needs {tokens} positions but {name} handles at most {limit} tokens "
            f"(max_position_embeddings = {limit}); shorten the context or use a longer-context model"
        )


def model_info(model) -> ModelInfo:
    """Read layer/head geometry and sliding windows; raise ModelError for models we can't drive."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "generate") or not callable(model):
        raise ModelError(
            f"{type(model).__name__} is not a Hugging Face model: load one with "
            "transformers.AutoModelForCausalLM.from_pretrained(...)"
        )
    if getattr(config, "is_encoder_decoder", False):
        raise ModelError(
            f"{type(model).__name__} is an encoder-decoder model; kvstack compresses decoder-only "
            "causal LMs (load with AutoModelForCausalLM)"
        )
    name = type(model).__name__
    if not (name.endswith("ForCausalLM") or name.endswith("LMHeadModel")):
        raise ModelError(
            f"{name} is not a causal language model: kvstack needs a *ForCausalLM model "
            "(transformers.AutoModelForCausalLM.from_pretrained)"
        )
    text = config.get_text_config(decoder=True)
    missing = [f for f in ("num_hidden_layers", "num_attention_heads") if getattr(text, f, None) is None]
    if missing:
        raise ModelError(f"model config lacks {missing}; kvstack cannot tell the cache geometry")
    if getattr(text, "num_kv_shared_layers", 0):
        raise ModelError(
            f"{config.model_type} shares KV between layers (num_kv_shared_layers); kvstack does not "
            "compress such models yet - `kvstack plan` can still size their cache"
        )
    layers = int(text.num_hidden_layers)
    q_heads = int(text.num_attention_heads)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or q_heads)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // q_heads
    window = getattr(text, "sliding_window", None)
    layer_types = getattr(text, "layer_types", None)
    if layer_types is None:
        layer_types = ["sliding_attention" if window else "full_attention"] * layers
    windows = tuple(int(window) if t == "sliding_attention" and window else None for t in layer_types)
    if any(t not in ("sliding_attention", "full_attention") for t in layer_types):
        raise ModelError(
            f"unsupported attention layer types {sorted(set(layer_types))} in {config.model_type}"
        )
    dtype = next(model.parameters()).dtype
    return ModelInfo(
        num_layers=layers,
        num_query_heads=q_heads,
        num_kv_heads=kv_heads,
        head_dim=int(head_dim),
        sliding_windows=windows,
        dtype=dtype,
        model_type=str(config.model_type),
        fingerprint=_config_fingerprint(config),
    )
