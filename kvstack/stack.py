"""Recipes: stages composed into one compression, from Python or from a string.

Grammar (what ``kvstack run --recipe`` accepts)::

    recipe := stage ( ">" stage )*
    stage  := name [ ":" param ( "," param )* ] [ "@layer" N | "@layers" A "-" B ]
    param  := value | key "=" value        (positional ones first)

``snapkv:0.25 > int4:g64,axis=channel > fp16@layer0``. A stage scoped with ``@`` to
some layers *overrides* unscoped stages of the same family on those layers, so
``int8 > fp16@layer0`` leaves layer 0 unquantized instead of quantizing it and then
casting it back.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from kvstack.errors import RecipeError
from kvstack.kv import KVCache

# --- what a stage may ask the prefill driver for ----------------------------------------
NEED_QUESTION_QUERIES = "question_queries"  # post-RoPE queries of the question tokens, per layer
NEED_WINDOW_QUERIES = "window_queries"  # post-RoPE queries of the last `window` context tokens
NEED_ATTENTION = "attention"  # attention each key received, summed over all context queries
NEED_TOKEN_NLL = "token_nll"  # [T] -log p(token | earlier context) of every context token, from the prefill's logits
ATTN_PARAMS = "attn_params"  # always captured with the above: layer -> (scaling, softcap) the model uses

# Families where at most one stage may act on a layer (a scoped one overrides an unscoped one).
EXCLUSIVE_FAMILIES = frozenset({"quantize"})


@dataclass(frozen=True)
class Param:
    """One stage parameter: how to parse it, its default, and a one-line help."""

    name: str
    kind: Callable[[str], Any]
    default: Any
    help: str

    def parse(self, stage: str, raw: str) -> Any:
        try:
            return self.kind(raw)
        except (TypeError, ValueError) as exc:
            kind = getattr(self.kind, "__name__", "value")
            raise RecipeError(
                f"stage '{stage}': parameter '{self.name}' got {raw!r}, which is not a valid {kind} "
                f"({self.help})"
            ) from exc


def as_bool(raw: str) -> bool:
    low = raw.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)
as_bool.__name__ = "boolean (true/false)"


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

    Subclasses set ``name``, ``summary``, ``family`` and ``params``, and implement
    :meth:`apply_layer` (or :meth:`apply` when they need to see all layers at once).
    ``needs`` names the captures (``NEED_*``) the prefill driver must collect.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    family: ClassVar[str] = "misc"
    params: ClassVar[tuple[Param, ...]] = ()
    needs: ClassVar[frozenset[str]] = frozenset()
    needs_question: ClassVar[bool] = False

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
        self.validate()

    # --- hooks --------------------------------------------------------------------
    def validate(self) -> None:
        """Check parameter values; raise RecipeError/BudgetError with what to do."""

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
        return None

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


def scope_text(layers: set[int]) -> str:
    """``@layer3`` / ``@layers0-3``: the suffix the parser reads back (scopes are contiguous ranges)."""
    lo, hi = min(layers), max(layers)
    if layers != set(range(lo, hi + 1)):
        raise RecipeError(f"layer scope {sorted(layers)} is not a contiguous range; split it into several stages")
    return f"@layer{lo}" if lo == hi else f"@layers{lo}-{hi}"


REGISTRY: dict[str, type[Stage]] = {}


def register(cls: type[Stage]) -> type[Stage]:
    """Class decorator: make a stage usable by name in recipes."""
    if not cls.name or cls.name in REGISTRY:
        raise RuntimeError(f"stage name {cls.name!r} missing or registered twice")
    REGISTRY[cls.name] = cls
    return cls


def _load_builtin_stages() -> None:
    # Lazy: the stage modules import this one; kvstack/stages/__init__.py lists them.
    from kvstack.stages import load_builtin

    load_builtin()


_SCOPE = re.compile(r"^(?P<body>.*?)@(?:layer(?P<one>\d+)|layers(?P<a>\d+)-(?P<b>\d+))$")


def parse_stage(text: str) -> Stage:
    """Parse one stage such as ``int8:g64,axis=token@layers0-3``."""
    _load_builtin_stages()
    text = text.strip()
    if not text:
        raise RecipeError("empty stage in recipe (two '>' in a row, or a trailing '>'?)")
    layers = None
    if "@" in text:
        m = _SCOPE.match(text)
        if not m:
            raise RecipeError(
                f"bad layer scope in {text!r}: write '@layer3' or '@layers0-3' at the end of the stage"
            )
        text = m["body"].strip()
        if m["one"] is not None:
            layers = {int(m["one"])}
        else:
            a, b = int(m["a"]), int(m["b"])
            if b < a:
                raise RecipeError(f"layer range {a}-{b} is empty: write the lower layer first")
            layers = set(range(a, b + 1))
    name, _, arg_text = text.partition(":")
    name = name.strip()
    cls = REGISTRY.get(name)
    if cls is None:
        raise RecipeError(
            f"unknown stage {name!r}. Stages: {', '.join(sorted(REGISTRY))} (run `kvstack recipes`)"
        )
    kwargs: dict[str, Any] = {}
    positional = [p for p in cls.params]
    seen_keyword = False
    for raw in [a.strip() for a in arg_text.split(",")] if arg_text.strip() else []:
        if not raw:
            raise RecipeError(f"empty parameter in stage {text!r}")
        if "=" in raw:
            seen_keyword = True
            key, _, value = raw.partition("=")
            key = key.strip()
            param = next((p for p in cls.params if p.name == key), None)
            if param is None:
                raise RecipeError(f"stage '{name}' has no parameter '{key}'; it takes: {cls._param_list()}")
            kwargs[key] = param.parse(name, value.strip())
            continue
        short = cls.shorthand(raw)
        if short is not None:
            kwargs[short[0]] = short[1]
            continue
        if seen_keyword:
            raise RecipeError(f"stage {text!r}: positional value {raw!r} after key=value; put it first")
        free = [p for p in positional if p.name not in kwargs]
        if not free:
            raise RecipeError(f"stage '{name}': too many values; it takes: {cls._param_list()}")
        kwargs[free[0].name] = free[0].parse(name, raw)
        positional.remove(free[0])
    stage = cls(**kwargs)
    stage.layers = layers
    return stage


class Recipe:
    """An ordered list of stages; applying it resolves layer overrides within each family."""

    def __init__(self, stages: list[Stage], text: str | None = None) -> None:
        self.stages = stages
        self.text = text if text is not None else " > ".join(s.spec() for s in stages) or "identity"

    @classmethod
    def parse(cls, text: str) -> Recipe:
        if not isinstance(text, str) or not text.strip():
            raise RecipeError("empty recipe: use 'identity' for no compression, or see `kvstack recipes`")
        from kvstack.presets import expand  # `best:16x` names a whole recipe (kvstack/presets.py)

        return cls([parse_stage(part) for part in expand(text).split(">")], text=text.strip())

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
