"""Translate a Hugging Face ``config.json`` into an :class:`ArchSpec`.

Each supported ``model_type`` has a rule entry in ``FAMILIES``. When a field is absent the
planner does what transformers does only where that default follows from other fields
(``head_dim = hidden_size // num_attention_heads``; MHA when ``num_key_value_heads`` is absent
for the model types whose transformers config falls back to MHA). Everything else a size
depends on is required: a missing field is a ConfigError that names it, never a guess.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvstack.errors import ConfigError, InputError
from kvstack.plan.params import estimate_params
from kvstack.plan.precision import config_dtype
from kvstack.plan.spec import ArchSpec, LayerSpec


@dataclass(frozen=True)
class Family:
    """How one ``model_type`` lays out its cache and which absent fields have safe defaults.

    ``attention``: ``heads`` (MHA/GQA), ``mla`` (DeepSeek latent) or ``gpt2`` (GPT-2 naming).
    ``mha_fallback``: transformers documents "num_key_value_heads absent => MHA" for this type.
    ``kv_heads_default`` / ``head_dim_default``: transformers' constant defaults, quoted in
    errors but never applied (a constant is a guess about someone else's checkpoint).
    ``sliding``: the rule that decides sliding layers when ``layer_types`` is absent.
    """

    attention: str = "heads"
    mha_fallback: bool = False
    kv_heads_default: int | None = None
    head_dim_default: int | None = None
    sliding: str = "none"
    sliding_window_required: bool = False
    kv_sharing: str = "none"  # "none" | "required" | "optional"


FAMILIES: dict[str, Family] = {
    "llama": Family(mha_fallback=True),
    "mistral": Family(kv_heads_default=8, sliding="all_if_set", sliding_window_required=True),
    "mixtral": Family(kv_heads_default=8, sliding="all_if_set"),
    "qwen2": Family(kv_heads_default=32, sliding="qwen"),
    "qwen2_moe": Family(kv_heads_default=16, sliding="qwen2_moe"),
    "qwen3": Family(kv_heads_default=32, head_dim_default=128, sliding="qwen"),
    "qwen3_moe": Family(kv_heads_default=4, sliding="qwen_all"),
    "phi3": Family(mha_fallback=True, sliding="all_if_set"),
    "gemma": Family(kv_heads_default=16, head_dim_default=256),
    "gemma2": Family(kv_heads_default=4, head_dim_default=256, sliding="alternate"),
    "gemma3_text": Family(kv_heads_default=4, head_dim_default=256, sliding="gemma3"),
    "gemma3n_text": Family(
        kv_heads_default=2, head_dim_default=256, sliding="gemma3n", kv_sharing="required"
    ),
    "gemma4_text": Family(
        kv_heads_default=4, head_dim_default=256, sliding="gemma4", kv_sharing="optional"
    ),
    "deepseek_v2": Family(attention="mla"),
    "deepseek_v3": Family(attention="mla"),
    "gpt2": Family(attention="gpt2"),
}
# Multimodal wrappers whose decoder lives in ``text_config``.
WRAPPERS = {"gemma3": "gemma3_text", "gemma3n": "gemma3n_text", "gemma4": "gemma4_text"}
_LAYER_TYPES = {"full_attention": "full", "sliding_attention": "sliding"}


def supported_model_types() -> list[str]:
    return sorted({*FAMILIES, *WRAPPERS})


class Fields:
    """Reads fields from the decoder config, falling back to the outer (multimodal) config."""

    def __init__(self, text: dict[str, Any], outer: dict[str, Any], model_type: str, where: str):
        self.text, self.outer, self.model_type, self.where = text, outer, model_type, where

    def has(self, key: str) -> bool:
        return key in self.text or key in self.outer

    def get(self, key: str, default: Any = None) -> Any:
        if key in self.text:
            return self.text[key]
        return self.outer.get(key, default)

    def missing(self, key: str, advice: str = "") -> ConfigError:
        advice = advice or "add it to the config (copy it from the model's config.json on the Hub)"
        return ConfigError(
            f"{self.where}: field '{key}' is missing or null, and model_type "
            f"'{self.model_type}' needs it to size the KV cache; {advice}"
        )

    def int_field(self, key: str, *, required: bool = True, minimum: int = 1) -> int | None:
        value = self.get(key)
        if value is None:
            if required:
                raise self.missing(key)
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(
                f"{self.where}: field '{key}' must be an integer >= {minimum}, got {value!r}"
            )
        return value


def read_config(path: str | Path) -> dict[str, Any]:
    """Load a config.json (or a directory holding one); typed errors for missing/bad files."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise InputError(
            f"config file {str(p)!r} does not exist; give a config.json path or a preset"
        )
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{p}: not a readable JSON config ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a config.json must hold a JSON object, got {type(data).__name__}")
    return data


def spec_from_config(config: dict[str, Any], name: str, source: str = "") -> ArchSpec:
    """The ArchSpec of a config dict. ``name`` labels output; ``source`` is used in errors."""
    where = source or name
    outer_type = config.get("model_type")
    text = config.get("text_config")
    if isinstance(text, dict):
        model_type = text.get("model_type") or WRAPPERS.get(str(outer_type))
        if model_type is None:
            raise ConfigError(
                f"{where}: text_config has no model_type and outer model_type {outer_type!r} is "
                f"not one kvstack plan knows; add text_config.model_type (one of "
                f"{', '.join(sorted(FAMILIES))})"
            )
    else:
        text, model_type = config, outer_type
        model_type = WRAPPERS.get(str(model_type), model_type)
    if model_type is None:
        raise ConfigError(
            f"{where}: field 'model_type' is missing; add it (one of "
            f"{', '.join(supported_model_types())})"
        )
    family = FAMILIES.get(str(model_type))
    if family is None:
        raise ConfigError(
            f"{where}: model_type {model_type!r} is not supported by kvstack plan (supported: "
            f"{', '.join(supported_model_types())}). If it is a Llama-style decoder (one K and V "
            "per KV head per layer), copy the config and set model_type to 'llama'."
        )
    fields = Fields(text, config if text is not config else {}, str(model_type), where)
    notes: list[str] = []
    if family.attention == "mla":
        layers, heads, hidden = _mla_layers(fields, notes)
    elif family.attention == "gpt2":
        layers, heads, hidden = _gpt2_layers(fields)
    else:
        layers, heads, hidden = _head_layers(fields, family, notes)
    dtype_raw = fields.get("dtype") or fields.get("torch_dtype")
    dtype = config_dtype(dtype_raw)
    if dtype_raw is not None and dtype is None:
        notes.append(f"config dtype {dtype_raw!r} is not a storage dtype; pass --dtype")
    max_pos = fields.get("max_position_embeddings") or fields.get("n_positions")
    spec = ArchSpec(
        name=name,
        model_type=str(model_type),
        layers=tuple(layers),
        num_attention_heads=heads,
        hidden_size=hidden,
        dtype=dtype,
        weight_bits=_weight_bits(config.get("quantization_config")),
        max_position_embeddings=max_pos if isinstance(max_pos, int) else None,
        source=source,
        notes=tuple(notes),
    )
    params = estimate_params(fields, spec)
    return ArchSpec(**{**spec.__dict__, "params": params})


def _weight_bits(qc: Any) -> int | None:
    """Bits per weight of a quantized checkpoint (fp8, GPTQ/AWQ ``bits``, bitsandbytes)."""
    if not isinstance(qc, dict):
        return None
    if qc.get("load_in_4bit"):
        return 4
    if qc.get("load_in_8bit"):
        return 8
    if str(qc.get("quant_method", "")).lower() == "fp8":
        return 8
    bits = qc.get("bits")
    return bits if isinstance(bits, int) and bits > 0 else None


def _kv_heads(fields: Fields, family: Family, heads: int, notes: list[str]) -> int:
    kv = fields.int_field("num_key_value_heads", required=False)
    if kv is not None:
        return kv
    if family.mha_fallback:
        notes.append(
            f"num_key_value_heads absent: {fields.model_type} defaults to MHA "
            f"({heads} KV heads), as transformers does"
        )
        return heads
    raise fields.missing(
        "num_key_value_heads",
        f"transformers' {fields.model_type} default is {family.kv_heads_default}, which kvstack "
        "plan will not assume; add the model's real value (or --gqa N for a what-if)",
    )


def _head_dim(fields: Fields, family: Family, hidden: int, heads: int, notes: list[str]) -> int:
    head_dim = fields.int_field("head_dim", required=False)
    if head_dim is not None:
        return head_dim
    if family.head_dim_default is not None:
        raise fields.missing(
            "head_dim",
            f"for {fields.model_type} transformers uses a fixed default of "
            f"{family.head_dim_default}, not hidden_size // num_attention_heads; add the real "
            "head_dim",
        )
    if hidden % heads:
        raise ConfigError(
            f"{fields.where}: head_dim is absent and hidden_size={hidden} is not divisible by "
            f"num_attention_heads={heads}; add head_dim to the config"
        )
    return hidden // heads


def _attention_types(fields: Fields, family: Family, n: int, notes: list[str]) -> list[str]:
    """ "full"/"sliding" per layer: explicit ``layer_types`` first, else the family's rule."""
    explicit = fields.get("layer_types")
    if explicit is not None:
        if not isinstance(explicit, list) or len(explicit) != n:
            raise ConfigError(
                f"{fields.where}: layer_types must list one type per layer ({n}), got "
                f"{len(explicit) if isinstance(explicit, list) else explicit!r}"
            )
        types = []
        for i, t in enumerate(explicit):
            if t not in _LAYER_TYPES:
                raise ConfigError(
                    f"{fields.where}: layer_types[{i}] is {t!r}; kvstack plan sizes only "
                    f"{' and '.join(_LAYER_TYPES)} layers"
                )
            types.append(_LAYER_TYPES[t])
    else:
        types = _default_types(fields, family, n, notes)
    if family.sliding == "gemma4" and types and types[-1] != "full":
        notes.append("last layer forced to full attention, as transformers does for Gemma 4")
        types[-1] = "full"
    return types


def _default_types(fields: Fields, family: Family, n: int, notes: list[str]) -> list[str]:
    rule = family.sliding
    if rule == "all_if_set":
        if family.sliding_window_required and not fields.has("sliding_window"):
            raise fields.missing(
                "sliding_window",
                f"transformers' {fields.model_type} default is 4096 on every layer (v0.1) while "
                "later releases set null; add the real value (null for no window)",
            )
        return ["sliding" if fields.get("sliding_window") else "full"] * n
    if rule in ("qwen", "qwen2_moe", "qwen_all"):
        if not fields.get("use_sliding_window", False) or fields.get("sliding_window") is None:
            return ["full"] * n
        if rule == "qwen_all":
            return ["sliding"] * n
        mwl = fields.int_field("max_window_layers", minimum=0)
        if rule == "qwen":
            return ["sliding" if i >= mwl else "full" for i in range(n)]
        return ["sliding" if (i + 1) % 2 and i < mwl else "full" for i in range(n)]
    if rule == "alternate":
        return ["sliding" if (i + 1) % 2 else "full" for i in range(n)]
    if rule in ("gemma3", "gemma4"):
        pattern = fields.get("sliding_window_pattern") or fields.get("_sliding_window_pattern")
        if pattern is None:
            pattern = 6
            notes.append(
                "no layer_types or sliding_window_pattern: transformers' default pattern of 6 "
                "(5 sliding, then 1 global) applied"
            )
        if not isinstance(pattern, int) or pattern < 1:
            raise ConfigError(
                f"{fields.where}: sliding_window_pattern must be >= 1, got {pattern!r}"
            )
        return ["sliding" if (i + 1) % pattern else "full" for i in range(n)]
    if rule == "gemma3n":
        return ["full" if (i + 1) % 5 == 0 else "sliding" for i in range(n)]
    return ["full"] * n


def _shared_sources(fields: Fields, family: Family, types: list[str]) -> dict[int, int]:
    """Gemma 3n/4: the last ``num_kv_shared_layers`` layers read the cache of the last earlier
    layer of the same attention type (transformers' ``kv_shared_layer_index``)."""
    if family.kv_sharing == "none":
        return {}
    shared = fields.int_field(
        "num_kv_shared_layers", required=family.kv_sharing == "required", minimum=0
    )
    return share_last_layers(types, shared or 0, fields.where)


def share_last_layers(types: list[str], shared: int, where: str = "what-if") -> dict[int, int]:
    """Map shared layer -> source layer for the last ``shared`` layers (same-type rule)."""
    n = len(types)
    if shared == 0:
        return {}
    if shared >= n:
        raise ConfigError(
            f"{where}: {shared} shared layers leaves no layer to hold a cache ({n} layers); "
            f"share at most {n - 1}"
        )
    first = n - shared
    sources = {}
    for i in range(first, n):
        same = [j for j in range(first) if types[j] == types[i]]
        if not same:
            raise ConfigError(
                f"{where}: shared layer {i} is {types[i]} attention but no earlier non-shared "
                f"layer is; nothing to share its cache with"
            )
        sources[i] = same[-1]
    return sources


def _per_layer_overrides(fields: Fields, n: int) -> dict[int, dict[str, Any]]:
    raw = fields.get("per_layer_config")
    if not isinstance(raw, dict):
        return {}
    out: dict[int, dict[str, Any]] = {}
    for key, value in raw.items():
        try:
            index = int(key)
        except (TypeError, ValueError):
            raise ConfigError(
                f"{fields.where}: per_layer_config key {key!r} is not a layer index"
            ) from None
        if not 0 <= index < n or not isinstance(value, dict):
            raise ConfigError(
                f"{fields.where}: per_layer_config entry {key!r} is not a valid layer"
            )
        out[index] = value
    return out


def _head_layers(
    fields: Fields, family: Family, notes: list[str]
) -> tuple[list[LayerSpec], int, int]:
    n = fields.int_field("num_hidden_layers")
    heads = fields.int_field("num_attention_heads")
    hidden = fields.int_field("hidden_size")
    kv = _kv_heads(fields, family, heads, notes)
    head_dim = _head_dim(fields, family, hidden, heads, notes)
    types = _attention_types(fields, family, n, notes)
    window = None
    if "sliding" in types:
        window = fields.int_field("sliding_window")
    overrides = _per_layer_overrides(fields, n)
    global_dim, global_kv = head_dim, kv
    if family.sliding == "gemma4" and not overrides:
        global_dim = fields.int_field("global_head_dim", required=False)
        if global_dim is None:
            raise fields.missing(
                "global_head_dim",
                "Gemma 4 global layers use their own head size (transformers' default is 512); "
                "add the real global_head_dim",
            )
        if fields.get("attention_k_eq_v"):
            global_kv = fields.int_field("num_global_key_value_heads", required=False) or kv
            notes.append(
                "attention_k_eq_v: global layers share one K/V projection, but the cache still "
                "stores keys and values separately (as transformers does)"
            )
    sources = _shared_sources(fields, family, types)
    layers = []
    for i, attention in enumerate(types):
        dim = global_dim if attention == "full" else head_dim
        heads_i = global_kv if attention == "full" else kv
        if i in overrides:
            dim = overrides[i].get("head_dim", dim)
            heads_i = overrides[i].get("num_key_value_heads", heads_i) or heads_i
        layers.append(
            LayerSpec(
                index=i,
                attention=attention,
                window=window if attention == "sliding" else None,
                kv_heads=heads_i,
                k_head_dim=dim,
                v_head_dim=dim,
                shares_with=sources.get(i),
            )
        )
    return layers, heads, hidden


def _mla_layers(fields: Fields, notes: list[str]) -> tuple[list[LayerSpec], int, int]:
    """DeepSeek-V2/V3 Multi-head Latent Attention: per token per layer, one compressed KV latent
    (``kv_lora_rank``) plus one shared decoupled-RoPE key (``qk_rope_head_dim``)."""
    n = fields.int_field("num_hidden_layers")
    heads = fields.int_field("num_attention_heads")
    hidden = fields.int_field("hidden_size")
    rank = fields.int_field("kv_lora_rank")
    rope = fields.int_field("qk_rope_head_dim", minimum=0)
    nope = fields.int_field("qk_nope_head_dim", required=False, minimum=0) or 0
    v_dim = fields.int_field("v_head_dim", required=False) or 0
    if not nope or not v_dim:
        notes.append(
            "qk_nope_head_dim/v_head_dim absent: the MHA-equivalent shape (for --gqa what-ifs) "
            "is unknown; use --head-dim with --gqa"
        )
    layer = LayerSpec(
        index=0,
        kv_heads=heads,
        k_head_dim=nope + rope,
        v_head_dim=v_dim,
        latent_dim=rank,
        rope_dim=rope,
    )
    return [LayerSpec(**{**layer.__dict__, "index": i}) for i in range(n)], heads, hidden


def _gpt2_layers(fields: Fields) -> tuple[list[LayerSpec], int, int]:
    """GPT-2 names its dimensions n_layer/n_head/n_embd and is always MHA."""

    def pick(name: str, alias: str) -> int:
        key = name if fields.get(name) is not None else alias
        return fields.int_field(key) if fields.get(key) is not None else _raise(fields, name, alias)

    n = pick("n_layer", "num_hidden_layers")
    heads = pick("n_head", "num_attention_heads")
    hidden = pick("n_embd", "hidden_size")
    if hidden % heads:
        raise ConfigError(f"{fields.where}: n_embd={hidden} is not divisible by n_head={heads}")
    dim = hidden // heads
    layers = [LayerSpec(index=i, kv_heads=heads, k_head_dim=dim, v_head_dim=dim) for i in range(n)]
    return layers, heads, hidden


def _raise(fields: Fields, name: str, alias: str) -> int:
    raise fields.missing(name, f"GPT-2 configs spell it '{name}' (or '{alias}'); add it")
