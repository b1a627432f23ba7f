"""Parameter count from config dimensions, for ``--weights auto`` when no published count exists.

The estimate counts embeddings, the LM head (unless tied), attention and MLP/MoE projections,
norms and the biases GPT-2/Qwen2 carry. It skips vision/audio towers, MTP heads and small
extras (Gemma 3n AltUp/LAuReL), so it is a text-decoder estimate good to a few percent for
dense and MoE decoders; presets store the published count instead.
"""

from __future__ import annotations

from typing import Any, Protocol

from kvstack.plan.spec import ArchSpec

_FOUR_NORMS = {"gemma2", "gemma3_text", "gemma3n_text", "gemma4_text"}
_QK_NORM = {"qwen3", "qwen3_moe", "gemma3_text", "gemma3n_text", "gemma4_text"}
_TIED_BY_DEFAULT = {"gpt2", "gemma", "gemma2", "gemma3_text", "gemma3n_text", "gemma4_text"}


class _Fields(Protocol):
    def get(self, key: str, default: Any = None) -> Any: ...


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def estimate_params(fields: _Fields, spec: ArchSpec) -> int | None:
    """Estimated parameter count of the text decoder, or None when the config lacks the sizes."""
    g = fields.get
    h, vocab = spec.hidden_size, _int(g("vocab_size"))
    if vocab is None:
        return None
    tied = g("tie_word_embeddings")
    if tied is None:
        tied = spec.model_type in _TIED_BY_DEFAULT
    total = vocab * h * (1 if tied else 2)
    if spec.model_type == "gpt2":
        return total + _gpt2_body(fields, spec)
    norms = 4 * h if spec.model_type in _FOUR_NORMS else 2 * h
    for layer in spec.layers:
        attn = _attention(fields, spec, layer)
        mlp = _mlp(fields, spec, layer.index)
        if attn is None or mlp is None:
            return None
        total += attn + mlp + norms
    total += h  # final norm
    total += _per_layer_embeddings(fields, spec)
    return total


def _attention(fields: _Fields, spec: ArchSpec, layer: Any) -> int | None:
    g, h, heads = fields.get, spec.hidden_size, spec.num_attention_heads
    if layer.is_latent:
        qk, v, rank, rope = layer.k_head_dim, layer.v_head_dim, layer.latent_dim, layer.rope_dim
        nope = qk - rope
        q_rank = _int(g("q_lora_rank"))
        q = h * q_rank + q_rank + q_rank * heads * qk if q_rank else h * heads * qk
        kv = h * (rank + rope) + rank + rank * heads * (nope + v)
        return q + kv + heads * v * h
    qd, kd, vd, kv_heads = layer.k_head_dim, layer.k_head_dim, layer.v_head_dim, layer.kv_heads
    k_eq_v = bool(g("attention_k_eq_v")) and layer.attention == "full"
    total = 2 * h * heads * qd + h * kv_heads * kd + (0 if k_eq_v else h * kv_heads * vd)
    if g("attention_bias") or spec.model_type in ("qwen2", "qwen2_moe"):
        total += heads * qd + kv_heads * (kd + vd)
    if spec.model_type in _QK_NORM:
        total += qd + kd
    return total


def _mlp(fields: _Fields, spec: ArchSpec, index: int) -> int | None:
    g, h, mt = fields.get, spec.hidden_size, spec.model_type
    inter = g("intermediate_size")
    if isinstance(inter, list):
        inter = inter[index] if index < len(inter) else None
    inter = _int(inter)
    if mt == "mixtral":
        experts = _int(g("num_local_experts"))
        return None if not (experts and inter) else experts * 3 * h * inter + h * experts
    if mt in ("qwen2_moe", "qwen3_moe"):
        experts, moe = _int(g("num_experts")), _int(g("moe_intermediate_size"))
        if not (experts and moe):
            return None
        shared = _int(g("shared_expert_intermediate_size")) or 0
        return experts * 3 * h * moe + h * experts + 3 * h * shared + (h if shared else 0)
    if mt in ("deepseek_v2", "deepseek_v3"):
        dense_first = _int(g("first_k_dense_replace")) or 0
        routed = _int(g("n_routed_experts"))
        if index < dense_first or not routed:
            return 3 * h * inter if inter else None
        moe = _int(g("moe_intermediate_size"))
        shared = _int(g("n_shared_experts")) or 0
        return None if not moe else (routed + shared) * 3 * h * moe + h * routed
    if inter is None:
        return None
    if (
        mt == "gemma4_text"
        and g("use_double_wide_mlp")
        and spec.layers[index].shares_with is not None
    ):
        inter *= 2
    return 3 * h * inter


def _per_layer_embeddings(fields: _Fields, spec: ArchSpec) -> int:
    """Gemma 3n/4 per-layer embeddings (PLE): a table of ``vocab x layers x ple`` plus gates."""
    ple = _int(fields.get("hidden_size_per_layer_input"))
    if not ple or spec.model_type not in ("gemma3n_text", "gemma4_text"):
        return 0
    vocab = _int(fields.get("vocab_size_per_layer_input")) or _int(fields.get("vocab_size")) or 0
    n, h = spec.num_layers, spec.hidden_size
    table = vocab * n * ple
    projection = h * n * ple + ple
    per_layer = n * (2 * h * ple + h)
    return table + projection + per_layer


def _gpt2_body(fields: _Fields, spec: ArchSpec) -> int:
    h, n = spec.hidden_size, spec.num_layers
    inner = _int(fields.get("n_inner")) or 4 * h
    positions = _int(fields.get("n_positions")) or 0
    layer = 4 * h + (h * 3 * h + 3 * h) + (h * h + h) + (h * inner + inner) + (inner * h + h)
    return positions * h + n * layer + 2 * h
