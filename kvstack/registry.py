"""The stage contract and the registry: what a stage module imports to define and register its stages.

Stage modules import this, never :mod:`kvstack.stack`: the recipe layer (``stack``) loads the
stage modules on first use (``kvstack.stages.load_builtin``), so a stage module that imported
``stack`` back would close an import cycle. ``Stage``, ``StageContext``, ``REGISTRY`` and
``register`` stay importable from ``kvstack.stack`` too. This module imports no stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from kvstack.errors import RecipeError
from kvstack.grammar import SPECS, Param, StageSpec, scope_text
from kvstack.grammar import parse_stage as parse_stage_text
from kvstack.kv import KVCache

__all__ = ["REGISTRY", "Stage", "StageContext", "build_stage", "register"]


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


def build_stage(text: str) -> Stage:
    """One stage from its recipe text, from the stages registered so far (``kvstack.stack.parse_stage``
    first loads the built-in ones; a stage module that builds another stage at run time calls this)."""
    bound = parse_stage_text(text)
    cls = REGISTRY.get(bound.name)
    if cls is None:
        raise RecipeError(f"stage {bound.name!r} is declared but not registered: call kvstack.stages.load_builtin()")
    stage = cls(**bound.values)
    if bound.layers is not None:
        stage.layers = set(range(bound.layers[0], bound.layers[1] + 1))
    return stage
