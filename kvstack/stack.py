"""Recipes: stages composed into one compression, from Python or from a string.

The grammar (``snapkv:0.25 > int4:g64,axis=channel > fp16@layer0``), the presets and every
stage's declaration (name, family, parameters, checks) live in :mod:`kvstack.grammar`, which
the torch-free planner reads too; this module binds a parsed stage to its implementation
(``REGISTRY``) and applies recipes to caches. A stage scoped with ``@`` to some layers
*overrides* unscoped stages of the same family on those layers, so ``int8 > fp16@layer0``
leaves layer 0 unquantized instead of quantizing it and then casting it back.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from kvstack.errors import RecipeError
from kvstack.grammar import SPECS, Param, StageSpec, as_bool, scope_text, split_recipe
from kvstack.grammar import parse_stage as parse_stage_text
from kvstack.grammar.needs import (  # what a stage may ask the prefill driver for; re-exported
    ATTN_PARAMS,
    NEED_ATTENTION,
    NEED_QUESTION_QUERIES,
    NEED_TOKEN_NLL,
    NEED_WINDOW_QUERIES,
)
from kvstack.kv import KVCache

__all__ = [
    "ATTN_PARAMS", "EXCLUSIVE_FAMILIES", "NEED_ATTENTION", "NEED_QUESTION_QUERIES", "NEED_TOKEN_NLL",
    "NEED_WINDOW_QUERIES", "REGISTRY", "Param", "Recipe", "Stage", "StageContext", "as_bool", "describe_stages",
    "parse_stage", "register", "scope_text",
]

# Families where at most one stage may act on a layer (a scoped one overrides an unscoped one).
EXCLUSIVE_FAMILIES = frozenset({"quantize"})


@dataclass
class StageContext:
    """What the driver hands a stage: model facts and the captures the stage asked for."""

    num_query_heads: int
    num_kv_heads: int
    head_dim: int
    num_layers: int
    captures: dict[str, Any] = field(default_factory=dict)
    question_ids: Any = None


class Stage:
    """A technique: turns a :class:`KVCache` into a smaller one, on the layers it is given.

    A subclass names its declaration in :mod:`kvstack.grammar` (``class Gear(Stage,
    grammar="gear")``), which gives it ``name``, ``summary``, ``family``, ``params``, its
    shorthands and its parameter checks, and implements :meth:`apply_layer` (or :meth:`apply`
    when it needs to see all layers at once). ``needs`` names the captures (``NEED_*``) the
    prefill driver must collect.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    family: ClassVar[str] = "misc"
    params: ClassVar[tuple[Param, ...]] = ()
    needs: ClassVar[frozenset[str]] = frozenset()
    needs_question: ClassVar[bool] = False
    grammar_spec: ClassVar[StageSpec | None] = None

    def __init_subclass__(cls, grammar: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if grammar is None:
            return
        spec = SPECS.get(grammar)
        if spec is None:
            raise RuntimeError(f"{cls.__name__}: no stage {grammar!r} in kvstack.grammar.catalog.SPECS")
        cls.grammar_spec = spec
        cls.name, cls.summary, cls.family, cls.params = spec.name, spec.summary, spec.family, spec.params

    def __init__(self, **kwargs: Any) -> None:
        known = {p.name: p for p in self.params}
        for key in kwargs:
            if key not in known:
                raise RecipeError(
                    f"stage '{self.name}' has no parameter '{key}'; it takes: {self._param_list()}"
                )
        for p in self.params:
            setattr(self, p.name, kwargs.get(p.name, p.default))
        self.layers: set[int] | None = None  # scope from "@layers"; None = every layer
        if self.grammar_spec is not None and self.grammar_spec.check is not None:
            self.grammar_spec.check(self)
        self.validate()

    # --- hooks --------------------------------------------------------------------
    def validate(self) -> None:
        """Checks beyond the grammar's (which ran first); raise RecipeError/BudgetError with what to do."""

    def check_context(self, cache: KVCache) -> None:
        """Check the stage can run on this cache (e.g. its budget fits the context)."""

    def budget_note(self, context_length: int) -> str | None:
        """A note when a fixed-size budget (a token count) covers the whole context, so nothing changes.

        Such a budget is not an error: it keeps everything, as a fixed-size cache does. The note lets
        ``kvstack run`` and ``cache.stats["notes"]`` say so instead of leaving a ratio unexplained.
        """
        return None

    def apply(self, cache: KVCache, ctx: StageContext, layers: set[int]) -> KVCache:
        return cache.map_layers(lambda i, layer: self.apply_layer(i, layer, ctx), layers)

    def apply_layer(self, index: int, layer, ctx: StageContext):
        raise NotImplementedError

    @classmethod
    def shorthand(cls, token: str) -> tuple[str, Any] | None:
        """Map a bare token like ``g64`` or ``sym`` to ``(param, value)``; None if not one."""
        spec = cls.grammar_spec
        return spec.shorthand(token) if spec is not None and spec.shorthand is not None else None

    # --- description --------------------------------------------------------------
    @classmethod
    def _param_list(cls) -> str:
        return ", ".join(f"{p.name}={p.default}" for p in cls.params) or "(no parameters)"

    def spec(self) -> str:
        """The canonical recipe text of this stage with its parameter values."""
        args = ",".join(f"{p.name}={getattr(self, p.name)}" for p in self.params)
        text = self.name + (f":{args}" if args else "")
        if self.layers is not None:
            text += scope_text(self.layers)
        return text


REGISTRY: dict[str, type[Stage]] = {}


def register(cls: type[Stage]) -> type[Stage]:
    """Class decorator: make a stage usable by name in recipes. A built-in stage names its declaration
    in :mod:`kvstack.grammar` (``grammar="name"`` in the class line); a user's own stage class that
    sets ``name``, ``family``, ``summary`` and ``params`` itself is declared here, at registration."""
    if cls.grammar_spec is None:
        from kvstack.grammar.catalog import declare
        from kvstack.grammar.spec import StageSpec

        if not isinstance(getattr(cls, "name", None), str) or not cls.name:
            raise RuntimeError(f"stage {cls.__name__} has no name: set name/family/summary/params, or grammar='x'")
        cls.grammar_spec = declare(StageSpec(cls.name, cls.family, cls.summary, tuple(cls.params)))
    if cls.grammar_spec.name != cls.name:
        raise RuntimeError(f"stage {cls.__name__} names no stage of kvstack.grammar (class X(Stage, grammar='x'))")
    if cls.name in REGISTRY:
        raise RuntimeError(f"stage name {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls


def _load_builtin_stages() -> None:
    # Lazy: the stage modules import this one; kvstack/stages/__init__.py lists them.
    from kvstack.stages import load_builtin

    load_builtin()


def parse_stage(text: str) -> Stage:
    """Parse one stage such as ``int8:g64,axis=token@layers0-3`` (grammar: :mod:`kvstack.grammar.syntax`)."""
    _load_builtin_stages()
    bound = parse_stage_text(text)
    stage = REGISTRY[bound.name](**bound.values)
    if bound.layers is not None:
        stage.layers = set(range(bound.layers[0], bound.layers[1] + 1))
    return stage


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
