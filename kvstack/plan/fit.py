"""What fits on a device: the longest context, or the largest batch, next to the weights.

Memory = weights + KV cache; activations, CUDA context and allocator slack are not modelled,
so leave headroom (pass a smaller ``device_memory``). ``weights="auto"`` is the parameter count
(published for presets, estimated from the config otherwise) times the bytes per weight of
the checkpoint's dtype (or its quantized width, e.g. DeepSeek-V3's fp8).
"""

from __future__ import annotations

import math

from kvstack.errors import BudgetError, ConfigError
from kvstack.plan.planner import Storage, plan_with, resolve_storage
from kvstack.plan.precision import weight_bytes_per_param
from kvstack.plan.recipe_factor import RecipeEstimate
from kvstack.plan.spec import ArchSpec
from kvstack.plan.units import format_bytes, parse_size

CONTEXT_LIMIT = 2**40  # beyond this a context "never runs out of memory"


def weight_bytes(spec: ArchSpec, weights: int | str = "auto") -> int:
    """Bytes of the weights: a size (``16GB``, ``1234``) or ``auto`` (params x bytes/param)."""
    if isinstance(weights, str) and weights.strip().lower() == "auto":
        if spec.params is None:
            raise ConfigError(
                f"{spec.name}: cannot estimate the parameter count (the config lacks vocab_size "
                "or intermediate sizes); pass --weights BYTES, e.g. --weights 16GB"
            )
        return math.ceil(spec.params * weight_bytes_per_param(spec.dtype, spec.weight_bits))
    if str(weights).strip() in ("0", "0B"):
        return 0  # size the cache against the whole device
    return parse_size(weights)


def cache_budget(spec: ArchSpec, device_memory: int | str, weights: int | str) -> int:
    """Bytes left for the cache after the weights; BudgetError when the weights do not fit."""
    memory = parse_size(device_memory)
    weight = weight_bytes(spec, weights)
    if weight >= memory:
        raise BudgetError(
            f"{spec.name}: the weights alone ({format_bytes(weight)}) do not fit in "
            f"{format_bytes(memory)} of device memory; use a larger device, more devices, or "
            "quantized weights (pass their size with --weights)"
        )
    return memory - weight


def _storage(spec, dtype, bits, group_size, recipe) -> Storage:
    return resolve_storage(spec, dtype, bits=bits, group_size=group_size, recipe=recipe)


def max_context(
    spec: ArchSpec,
    device_memory: int | str,
    weights: int | str = "auto",
    batch: int = 1,
    dtype: str | None = None,
    *,
    bits: float | None = None,
    group_size: int | None = None,
    recipe: str | RecipeEstimate | None = None,
) -> int | None:
    """Longest context whose cache for ``batch`` sequences fits next to the weights.

    0 when not even one token fits; None when the cache stops growing (every layer sliding,
    shared or capped by a streaming recipe) before it runs out of memory.
    """
    budget = cache_budget(spec, device_memory, weights)
    storage = _storage(spec, dtype, bits, group_size, recipe)

    def fits(context: int) -> bool:
        return plan_with(spec, context, batch, storage).total_bytes <= budget

    if not fits(1):
        return 0
    if fits(CONTEXT_LIMIT):
        return None
    low, high = 1, 2
    while fits(high):
        low, high = high, high * 2
    while high - low > 1:  # fits(low) and not fits(high); the cache grows with context
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def max_batch(
    spec: ArchSpec,
    device_memory: int | str,
    weights: int | str = "auto",
    context: int = 8192,
    dtype: str | None = None,
    *,
    bits: float | None = None,
    group_size: int | None = None,
    recipe: str | RecipeEstimate | None = None,
) -> int:
    """Most sequences of ``context`` tokens whose caches fit next to the weights (0 if none)."""
    budget = cache_budget(spec, device_memory, weights)
    storage = _storage(spec, dtype, bits, group_size, recipe)
    per_sequence = plan_with(spec, context, 1, storage).bytes_per_sequence
    if per_sequence == 0:
        raise BudgetError(f"{spec.name}: the cache holds no bytes, so any batch fits")
    return budget // per_sequence
