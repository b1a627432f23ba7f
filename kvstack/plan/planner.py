"""The core arithmetic: bytes each layer's cache holds at a context length, for a batch.

Per layer and sequence: ``ceil(bits / 8)`` bytes, where tokens held follow the layer kind
(sliding: min(context, window); shared: 0) and then the recipe, and the bits follow how the
recipe stores them (a precision, or a stage's storage model from ``kvstack.grammar.storage``:
KIVI's dense residual, GEAR's factors, codebooks, low-rank coefficients and bases; evicting
recipes add kvstack's position tags). The batch multiplies per-sequence bytes, so the layer
bytes in a Plan always add up to ``total_bytes``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from kvstack.errors import ConfigError, InputError
from kvstack.plan.precision import Precision, precision_for
from kvstack.plan.recipe_factor import (
    POSITION_BITS,
    POSITIONS_HEAD,
    LayerEffect,
    RecipeEstimate,
    parse_recipe,
)
from kvstack.plan.spec import ArchSpec, LayerSpec


@dataclass(frozen=True)
class Storage:
    """How the cache is stored: base precision and an optional recipe estimate."""

    precision: Precision
    recipe: RecipeEstimate | None = None

    @property
    def label(self) -> str:
        text = self.precision.label
        return f"{text}, recipe '{self.recipe.text}'" if self.recipe else text


def resolve_storage(
    spec: ArchSpec,
    dtype: str | None = None,
    *,
    bits: float | None = None,
    group_size: int | None = None,
    recipe: str | RecipeEstimate | None = None,
) -> Storage:
    """The Storage for a spec: ``dtype`` or the config's dtype, ``bits``/``group_size``, recipe."""
    if dtype is None:
        dtype = spec.dtype
        if dtype is None:
            raise ConfigError(
                f"{spec.name}: the config names no torch_dtype/dtype for the cache; pass "
                "--dtype (fp32, bf16, fp16, fp8, int8, int4 or int2)"
            )
    precision = precision_for(dtype, group_size=group_size, bits=bits)
    estimate = parse_recipe(recipe) if isinstance(recipe, str) else recipe
    if estimate is not None:
        estimate.check_layers(spec.num_layers)
    return Storage(precision, estimate)


@dataclass(frozen=True)
class LayerPlan:
    """One layer's cache at the planned context: ``bytes`` covers the whole batch."""

    index: int
    kind: str
    tokens_held: int
    bytes: int
    bytes_per_sequence: int
    bits_per_token: Fraction
    layer: LayerSpec
    precision: Any  # a Precision, or a stage's storage model (kvstack.grammar.storage): has .label

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "kind": self.kind,
            "tokens_held": self.tokens_held,
            "bytes": self.bytes,
        }


@dataclass(frozen=True)
class Plan:
    """The KV cache of one model at one context and batch size."""

    spec: ArchSpec
    context: int
    batch: int
    storage: Storage
    layers: tuple[LayerPlan, ...]

    @property
    def model(self) -> str:
        return self.spec.name

    @property
    def total_bytes(self) -> int:
        return sum(layer.bytes for layer in self.layers)

    @property
    def bytes_per_sequence(self) -> int:
        return sum(layer.bytes_per_sequence for layer in self.layers)

    @property
    def bytes_per_token(self) -> float:
        """Bytes one token costs when every cache-holding layer keeps it (no window or
        eviction applies): the figure model cards and papers quote."""
        bits = sum((layer.bits_per_token for layer in self.layers), Fraction(0))
        return float(bits / 8)

    @property
    def average_bytes_per_token(self) -> float:
        """Bytes per context token at this context, after windows, sharing and eviction."""
        return self.bytes_per_sequence / self.context

    def to_json(self) -> dict[str, Any]:
        """Exactly ``{model, context, batch, total_bytes, layers}``; each layer is
        ``{index, kind, tokens_held, bytes}``."""
        return {
            "model": self.model,
            "context": self.context,
            "batch": self.batch,
            "total_bytes": self.total_bytes,
            "layers": [layer.to_json() for layer in self.layers],
        }


def layer_plan(layer: LayerSpec, context: int, batch: int, storage: Storage) -> LayerPlan:
    effect = LayerEffect(layer.tokens_held(context), storage.precision)
    if storage.recipe is not None and layer.shares_with is None:
        effect = storage.recipe.apply(layer.index, effect.tokens, storage.precision)
    tokens, precision = effect.tokens, effect.precision
    tag_bits = 0
    if effect.positions:  # kvstack's int32 position tags: per head, or once for the layer
        tag_bits = POSITION_BITS * (layer.cached_heads if effect.positions == POSITIONS_HEAD else 1)
    total_bits = precision.layer_bits(layer, tokens, storage.precision, effect.kept) + tokens * tag_bits
    bits = precision.bits_per_token(layer, storage.precision) + tag_bits
    per_sequence = math.ceil(total_bits / 8)
    return LayerPlan(
        index=layer.index,
        kind=layer.kind,
        tokens_held=tokens,
        bytes=per_sequence * batch,
        bytes_per_sequence=per_sequence,
        bits_per_token=bits,
        layer=layer,
        precision=precision,
    )


def plan(
    spec: ArchSpec,
    context: int,
    batch: int = 1,
    dtype: str | None = None,
    *,
    bits: float | None = None,
    group_size: int | None = None,
    recipe: str | RecipeEstimate | None = None,
) -> Plan:
    """The cache of ``spec`` holding ``context`` tokens for each of ``batch`` sequences.

    ``dtype`` defaults to the config's dtype; ``bits`` overrides its width; ``group_size`` adds
    fp16 scale+zero per group; ``recipe`` applies a kvstack recipe's analytic estimate.
    """
    if isinstance(context, bool) or not isinstance(context, int) or context < 1:
        raise InputError(f"context must be a whole number of tokens >= 1, got {context!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InputError(f"batch must be a whole number >= 1, got {batch!r}")
    storage = resolve_storage(spec, dtype, bits=bits, group_size=group_size, recipe=recipe)
    return plan_with(spec, context, batch, storage)


def plan_with(spec: ArchSpec, context: int, batch: int, storage: Storage) -> Plan:
    """``plan`` with an already resolved Storage (used in loops such as fitting and plotting)."""
    layers = tuple(layer_plan(layer, context, batch, storage) for layer in spec.layers)
    return Plan(spec=spec, context=context, batch=batch, storage=storage, layers=layers)
