"""What the planner knows about an architecture: for each layer, what one token costs to cache.

Everything downstream (sizes, what-ifs, fitting) works on these two frozen dataclasses, never on
raw config.json dicts, so every model family is translated once, in ``config.py``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Literal

Kind = Literal["global", "sliding", "shared", "latent"]
KINDS: tuple[str, ...] = ("global", "sliding", "latent", "shared")


@dataclass(frozen=True)
class LayerSpec:
    """One decoder layer's cache.

    Head layers store ``kv_heads`` key vectors of ``k_head_dim`` and as many value vectors of
    ``v_head_dim`` per token. Latent (MLA) layers store one ``latent_dim`` vector plus a
    ``rope_dim`` decoupled-RoPE key per token; for them ``kv_heads``/``k_head_dim``/``v_head_dim``
    keep the equivalent multi-head shape so a what-if can turn them back into MHA/GQA.
    A shared layer (``shares_with`` set) stores nothing: it reads another layer's cache.
    """

    index: int
    attention: Literal["full", "sliding"] = "full"
    window: int | None = None
    kv_heads: int = 0
    k_head_dim: int = 0
    v_head_dim: int = 0
    latent_dim: int = 0
    rope_dim: int = 0
    shares_with: int | None = None

    @property
    def kind(self) -> str:
        if self.shares_with is not None:
            return "shared"
        if self.attention == "sliding":
            return "sliding"
        if self.latent_dim:
            return "latent"
        return "global"

    @property
    def is_latent(self) -> bool:
        return self.latent_dim > 0

    def vectors(self) -> tuple[int, ...]:
        """Lengths of the vectors one token stores here (a quantization group never spans two)."""
        if self.shares_with is not None:
            return ()
        if self.is_latent:
            return tuple(n for n in (self.latent_dim, self.rope_dim) if n)
        return (self.k_head_dim,) * self.kv_heads + (self.v_head_dim,) * self.kv_heads

    def key_vectors(self) -> tuple[int, ...]:
        """The key part of ``vectors()`` (for a latent layer, the whole latent row)."""
        if self.is_latent or self.shares_with is not None:
            return self.vectors()
        return (self.k_head_dim,) * self.kv_heads

    def value_vectors(self) -> tuple[int, ...]:
        if self.is_latent or self.shares_with is not None:
            return ()
        return (self.v_head_dim,) * self.kv_heads

    @property
    def cached_heads(self) -> int:
        """Heads with their own rows (a latent layer's row is shared by all query heads)."""
        if self.shares_with is not None:
            return 0
        return 1 if self.is_latent else self.kv_heads

    @property
    def elements_per_token(self) -> int:
        return sum(self.vectors())

    def tokens_held(self, context: int) -> int:
        """Tokens this layer keeps at a context of ``context`` (before any kvstack recipe)."""
        if self.shares_with is not None:
            return 0
        if self.attention == "sliding" and self.window is not None:
            return min(context, self.window)
        return context

    def shape(self) -> str:
        """``8 x (128+128)`` (heads x key+value dims) or ``latent 512+64``."""
        if self.is_latent:
            return f"latent {self.latent_dim}+{self.rope_dim}"
        return f"{self.kv_heads} x ({self.k_head_dim}+{self.v_head_dim})"

    def describe(self) -> str:
        if self.shares_with is not None:
            return f"reuses layer {self.shares_with}"
        text = self.shape()
        if self.attention == "sliding":
            text += f", window {self.window:,}"
        return text


@dataclass(frozen=True)
class ArchSpec:
    """A model's cache geometry plus what the planner needs to size its weights.

    ``params`` is the parameter count (published for presets, estimated from dimensions for
    config files; ``params_published`` says which). ``weight_bits`` is set when the checkpoint
    itself is quantized (DeepSeek-V3 ships fp8 weights). ``what_ifs`` lists applied what-ifs.
    """

    name: str
    model_type: str
    layers: tuple[LayerSpec, ...]
    num_attention_heads: int
    hidden_size: int
    dtype: str | None = None
    params: int | None = None
    params_published: bool = False
    weight_bits: int | None = None
    max_position_embeddings: int | None = None
    source: str = ""
    notes: tuple[str, ...] = ()
    what_ifs: tuple[str, ...] = ()

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def with_layers(
        self, layers: list[LayerSpec] | tuple[LayerSpec, ...], what_if: str
    ) -> ArchSpec:
        """A copy with new layers, its name tagged with the what-if that produced them."""
        return replace(
            self,
            layers=tuple(layers),
            name=f"{self.name} +{what_if}",
            what_ifs=(*self.what_ifs, what_if),
        )

    def kind_counts(self) -> dict[str, int]:
        counts = Counter(layer.kind for layer in self.layers)
        return {kind: counts[kind] for kind in KINDS if counts[kind]}

    def summary(self) -> str:
        """``32 layers: 32 global; 32 query heads; GQA 8 KV heads x 128`` style one-liner."""
        counts = ", ".join(f"{n} {kind}" for kind, n in self.kind_counts().items())
        shapes = sorted({layer.shape() for layer in self.layers if layer.shares_with is None})
        return (
            f"{self.num_layers} layers ({counts}); {self.num_attention_heads} query heads; "
            f"cached per token per layer: {' / '.join(shapes)}"
        )
