"""What-ifs: the same model with one architectural choice changed, to see what it buys.

Each function returns a new ArchSpec (names tagged ``+gqa 8`` and so on); none touches the
weights estimate, so ``--weights auto`` keeps sizing the original model's weights.
``apply_what_ifs`` applies them in a fixed order: GQA, head size, MLA, windows, sharing.
"""

from __future__ import annotations

import re
from dataclasses import replace

from kvstack.errors import ConfigError, InputError
from kvstack.plan.config import share_last_layers
from kvstack.plan.spec import ArchSpec, LayerSpec


def with_gqa(spec: ArchSpec, kv_heads: int) -> ArchSpec:
    """Every layer keeps ``kv_heads`` K/V heads (= query heads: MHA; 1: MQA).

    MLA layers become ordinary attention with their multi-head shape: DeepSeek's
    ``qk_nope_head_dim + qk_rope_head_dim`` per key head and ``v_head_dim`` per value head.
    """
    if kv_heads < 1:
        raise InputError(f"--gqa needs at least 1 KV head, got {kv_heads}")
    if spec.num_attention_heads % kv_heads:
        raise InputError(
            f"--gqa {kv_heads}: {spec.name} has {spec.num_attention_heads} query heads, which "
            f"{kv_heads} KV heads cannot share evenly; pick a divisor of {spec.num_attention_heads}"
        )
    layers = []
    for layer in spec.layers:
        if layer.is_latent and not (layer.k_head_dim and layer.v_head_dim):
            raise ConfigError(
                f"{spec.name}: the config lacks qk_nope_head_dim/v_head_dim, so the multi-head "
                "shape of its MLA layers is unknown; add --head-dim D to set it"
            )
        layers.append(replace(layer, kv_heads=kv_heads, latent_dim=0, rope_dim=0))
    return spec.with_layers(layers, f"gqa {kv_heads}")


def with_head_dim(spec: ArchSpec, head_dim: int) -> ArchSpec:
    """Every head layer's key and value head size set to ``head_dim``."""
    if head_dim < 1:
        raise InputError(f"--head-dim must be at least 1, got {head_dim}")
    layers = [replace(layer, k_head_dim=head_dim, v_head_dim=head_dim) for layer in spec.layers]
    return spec.with_layers(layers, f"head_dim {head_dim}")


def with_mla(spec: ArchSpec, latent_dim: int, rope_dim: int = 0) -> ArchSpec:
    """Every layer caches one ``latent_dim`` latent plus a ``rope_dim`` RoPE key (DeepSeek MLA)."""
    if latent_dim < 1 or rope_dim < 0:
        raise InputError(
            f"--mla needs a latent size >= 1 and a RoPE size >= 0, got {latent_dim}+{rope_dim}"
        )
    layers = [replace(layer, latent_dim=latent_dim, rope_dim=rope_dim) for layer in spec.layers]
    return spec.with_layers(layers, f"mla {latent_dim}+{rope_dim}")


def with_window(
    spec: ArchSpec, window: int | None = None, local_global: tuple[int, int] | None = None
) -> ArchSpec:
    """Sliding windows: ``local_global=(5, 1)`` makes each run of 6 layers 5 sliding then 1
    global (Gemma 3). Without it, ``window`` resizes existing sliding layers, or makes every
    layer sliding if the model has none (Mistral 7B v0.1)."""
    current = {layer.window for layer in spec.layers if layer.attention == "sliding"}
    if window is None:
        if local_global is None:
            return spec
        if len(current) != 1:
            raise InputError(
                f"--local-global needs --window W: {spec.name} has no sliding window to reuse"
            )
        window = current.pop()
    if window is None or window < 1:
        raise InputError(f"--window must be at least 1 token, got {window}")
    if local_global is not None:
        local, glob = local_global
        period = local + glob
        types = ["sliding" if i % period < local else "full" for i in range(spec.num_layers)]
        tag = f"window {window} ({local}:{glob})"
    elif current:
        types = [layer.attention for layer in spec.layers]
        tag = f"window {window}"
    else:
        types = ["sliding"] * spec.num_layers
        tag = f"window {window} (all layers)"
    layers = [
        replace(layer, attention=t, window=window if t == "sliding" else None)
        for layer, t in zip(spec.layers, types, strict=True)
    ]
    shared = sum(layer.shares_with is not None for layer in spec.layers)
    layers = _reshare(layers, shared, spec.name)
    return spec.with_layers(layers, tag)


def with_shared_layers(spec: ArchSpec, shared: int) -> ArchSpec:
    """The last ``shared`` layers reuse the cache of the last earlier layer of the same attention
    type (Gemma 3n/4's rule); 0 removes any sharing."""
    if shared < 0:
        raise InputError(f"--share-layers must be >= 0, got {shared}")
    if shared >= spec.num_layers:
        raise InputError(
            f"--share-layers {shared}: {spec.name} has {spec.num_layers} layers; at least one must "
            f"keep its own cache (use at most {spec.num_layers - 1})"
        )
    return spec.with_layers(_reshare(list(spec.layers), shared, spec.name), f"share {shared}")


def _reshare(layers: list[LayerSpec], shared: int, name: str) -> list[LayerSpec]:
    types = [layer.attention for layer in layers]
    try:
        sources = share_last_layers(types, shared, name)
    except ConfigError:
        # No earlier layer of the same type: share with the last non-shared layer instead.
        first = len(layers) - shared
        sources = {
            i: next((j for j in range(first - 1, -1, -1) if types[j] == types[i]), first - 1)
            for i in range(first, len(layers))
        }
    return [replace(layer, shares_with=sources.get(layer.index)) for layer in layers]


def parse_local_global(text: str) -> tuple[int, int]:
    """``5:1`` -> (5, 1): sliding layers per global layer in each repeating group."""
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(text))
    if not m or int(m.group(1)) + int(m.group(2)) == 0:
        raise InputError(
            f"--local-global {text!r}: write SLIDING:GLOBAL layers per group, e.g. 5:1 (Gemma 3)"
        )
    return int(m.group(1)), int(m.group(2))


def parse_mla(text: str) -> tuple[int, int]:
    """``512+64`` -> (512, 64): latent size + decoupled RoPE key size; ``512`` -> (512, 0)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:\+\s*(\d+)\s*)?", str(text))
    if not m or int(m.group(1)) == 0:
        raise InputError(f"--mla {text!r}: write LATENT+ROPE, e.g. 512+64 (DeepSeek-V3)")
    return int(m.group(1)), int(m.group(2) or 0)


def apply_what_ifs(
    spec: ArchSpec,
    *,
    gqa: int | None = None,
    head_dim: int | None = None,
    mla: tuple[int, int] | None = None,
    window: int | None = None,
    local_global: tuple[int, int] | None = None,
    share_layers: int | None = None,
) -> ArchSpec:
    """All requested what-ifs, in the order GQA, head size, MLA, windows, sharing."""
    if gqa is not None:
        spec = with_gqa(spec, gqa)
    if head_dim is not None:
        spec = with_head_dim(spec, head_dim)
    if mla is not None:
        spec = with_mla(spec, *mla)
    if window is not None or local_global is not None:
        spec = with_window(spec, window, local_global)
    if share_layers is not None:
        spec = with_shared_layers(spec, share_layers)
    return spec
