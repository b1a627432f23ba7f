"""Recipes: stages composed into one compression, from Python or from a string.

The grammar (``snapkv:0.25 > int4:g64,axis=channel > fp16@layer0``), the presets and every
stage's declaration (name, family, parameters, checks) live in :mod:`kvstack.grammar`, which
the torch-free planner reads too; this module binds a parsed stage to its implementation
(``REGISTRY``: :mod:`kvstack.registry`, re-exported here) and applies recipes to caches. A
stage scoped with ``@`` to some layers *overrides* unscoped stages of the same family on those
layers, so ``int8 > fp16@layer0`` leaves layer 0 unquantized instead of quantizing it and then
casting it back.
"""

from __future__ import annotations

from dataclasses import replace

from kvstack.errors import RecipeError
from kvstack.grammar import Param, as_bool, scope_text, split_recipe
from kvstack.grammar.needs import (  # what a stage may ask the prefill driver for; re-exported
    ATTN_PARAMS,
    NEED_ATTENTION,
    NEED_QUESTION_QUERIES,
    NEED_TOKEN_NLL,
    NEED_WINDOW_QUERIES,
)
from kvstack.kv import KVCache
from kvstack.registry import REGISTRY, Stage, StageContext, build_stage, register

__all__ = [
    "ATTN_PARAMS", "EXCLUSIVE_FAMILIES", "NEED_ATTENTION", "NEED_QUESTION_QUERIES", "NEED_TOKEN_NLL",
    "NEED_WINDOW_QUERIES", "REGISTRY", "Param", "Recipe", "Stage", "StageContext", "as_bool", "describe_stages",
    "parse_stage", "register", "scope_text",
]

# Families where at most one stage may act on a layer (a scoped one overrides an unscoped one).
EXCLUSIVE_FAMILIES = frozenset({"quantize"})


def _load_builtin_stages() -> None:
    # Lazy, so that importing this module does not import every stage; kvstack/stages/__init__.py lists them.
    from kvstack.stages import load_builtin

    load_builtin()


def parse_stage(text: str) -> Stage:
    """Parse one stage such as ``int8:g64,axis=token@layers0-3`` (grammar: :mod:`kvstack.grammar.syntax`)."""
    _load_builtin_stages()
    return build_stage(text)


class Recipe:
    """An ordered list of stages; applying it resolves layer overrides within each family."""

    def __init__(self, stages: list[Stage], text: str | None = None) -> None:
        self.stages = stages
        self.text = text if text is not None else " > ".join(s.spec() for s in stages) or "identity"

    @classmethod
    def parse(cls, text: str) -> Recipe:
        return cls([parse_stage(part) for part in split_recipe(text)], text=text.strip())

    @property
    def needs(self) -> frozenset[str]:
        out: frozenset[str] = frozenset()
        for s in self.stages:
            out |= s.needs
        return out

    @property
    def needs_question(self) -> bool:
        return any(s.needs_question for s in self.stages)

    def layers_for(self, index: int, num_layers: int) -> set[int]:
        """Layers stage ``index`` acts on: its scope, minus layers a scoped stage of its family claims."""
        stage = self.stages[index]
        mine = set(range(num_layers)) if stage.layers is None else {i for i in stage.layers if i < num_layers}
        if stage.layers is None:
            for other in self.stages:
                if other is not stage and other.family == stage.family and other.layers is not None:
                    mine -= other.layers
        return mine

    def check_exclusive(self, num_layers: int) -> None:
        """Two quantizers on the same layer would quantize already-quantized values: refuse."""
        owner: dict[int, str] = {}
        for i, stage in enumerate(self.stages):
            if stage.family not in EXCLUSIVE_FAMILIES:
                continue
            for layer in self.layers_for(i, num_layers):
                if (stage.family, layer) in owner:
                    raise RecipeError(
                        f"'{owner[(stage.family, layer)]}' and '{stage.spec()}' both {stage.family} layer {layer}; "
                        f"keep one, or scope one with @layerN / @layersA-B so it overrides the other there"
                    )
                owner[(stage.family, layer)] = stage.spec()

    def notes(self, context_length: int) -> list[str]:
        """What the stages say about a context of this length (e.g. a window that keeps everything)."""
        return [note for s in self.stages if (note := s.budget_note(context_length))]

    def apply(self, cache: KVCache, ctx: StageContext) -> KVCache:
        self.check_exclusive(len(cache.layers))
        notes = self.notes(cache.context_length)
        for i, stage in enumerate(self.stages):
            if stage.layers is not None and max(stage.layers) >= len(cache.layers):
                raise RecipeError(
                    f"stage '{stage.spec()}' names layer {max(stage.layers)}, but the model has "
                    f"{len(cache.layers)} cached layers (0-{len(cache.layers) - 1})"
                )
            stage.check_context(cache)
            cache = stage.apply(cache, ctx, self.layers_for(i, len(cache.layers)))
        # a new object with its own stats: caches built from one shared prefill must not share notes
        return replace(cache, recipe=self.text, stats={**cache.stats, "notes": notes})


def describe_stages() -> list[tuple[str, str, str, str]]:
    """Rows of (name, family, summary, parameters) for every registered stage."""
    _load_builtin_stages()
    rows = []
    for name in sorted(REGISTRY):
        cls = REGISTRY[name]
        params = "; ".join(f"{p.name}={p.default} ({p.help})" for p in cls.params) or "-"
        rows.append((name, cls.family, cls.summary, params))
    return rows
