"""``kvstack plan``: KV cache sizes of any architecture from its config, without torch.

from kvstack.plan import load_spec, plan, max_context
spec = load_spec("llama-3.1-8b")            # a preset, or a path to a config.json
p = plan(spec, context=131072)              # dtype from the config (bf16)
p.total_bytes, p.bytes_per_token, p.to_json()
max_context(spec, "24GiB", weights="auto")  # longest context next to the weights
"""

from __future__ import annotations

from kvstack.plan.fit import max_batch, max_context, weight_bytes
from kvstack.plan.load import load_spec
from kvstack.plan.planner import LayerPlan, Plan, plan
from kvstack.plan.presets import preset_names
from kvstack.plan.recipe_factor import RecipeEstimate, parse_recipe
from kvstack.plan.spec import ArchSpec, LayerSpec
from kvstack.plan.units import parse_context, parse_size
from kvstack.plan.whatif import (
    apply_what_ifs,
    with_gqa,
    with_head_dim,
    with_mla,
    with_shared_layers,
    with_window,
)

__all__ = [
    "ArchSpec",
    "LayerPlan",
    "LayerSpec",
    "Plan",
    "RecipeEstimate",
    "apply_what_ifs",
    "load_spec",
    "max_batch",
    "max_context",
    "parse_context",
    "parse_recipe",
    "parse_size",
    "plan",
    "preset_names",
    "weight_bytes",
    "with_gqa",
    "with_head_dim",
    "with_mla",
    "with_shared_layers",
    "with_window",
]
