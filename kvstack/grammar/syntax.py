"""The recipe grammar: text to :class:`~kvstack.grammar.spec.BoundStage` objects, checked.

Grammar (what ``kvstack run --recipe`` and ``kvstack plan --recipe`` accept)::

    recipe := preset | stage ( ">" stage )*
    stage  := name [ ":" param ( "," param )* ] [ "@layer" N | "@layers" A "-" B ]
    param  := value | key "=" value | shorthand        (positional values first)

``snapkv:0.25 > int4:g64,axis=channel > fp16@layer0``. A preset name (``best:16x``) stands for
its whole recipe. Positional values fill the parameters in declaration order; a shorthand
(``g64``, ``sym``, ``svd:0.95``) is the stage's own abbreviation for ``key=value``.
"""

from __future__ import annotations

import re
from typing import Any

from kvstack.errors import RecipeError
from kvstack.grammar.catalog import SPECS
from kvstack.grammar.presets import expand
from kvstack.grammar.spec import BoundStage, StageSpec

_SCOPE = re.compile(r"^(?P<body>.*?)@(?:layer(?P<one>\d+)|layers(?P<a>\d+)-(?P<b>\d+))$")


def scope_text(layers: set[int]) -> str:
    """``@layer3`` / ``@layers0-3``: the suffix the parser reads back (scopes are contiguous ranges)."""
    lo, hi = min(layers), max(layers)
    if layers != set(range(lo, hi + 1)):
        raise RecipeError(f"layer scope {sorted(layers)} is not a contiguous range; split it into several stages")
    return f"@layer{lo}" if lo == hi else f"@layers{lo}-{hi}"


def split_recipe(text: str) -> list[str]:
    """The stage texts of a recipe (a preset expanded); RecipeError for an empty recipe."""
    if not isinstance(text, str) or not text.strip():
        raise RecipeError("empty recipe: use 'identity' for no compression, or see `kvstack recipes`")
    return expand(text).split(">")


def _scope(text: str) -> tuple[str, tuple[int, int] | None]:
    if "@" not in text:
        return text, None
    m = _SCOPE.match(text)
    if not m:
        raise RecipeError(f"bad layer scope in {text!r}: write '@layer3' or '@layers0-3' at the end of the stage")
    if m["one"] is not None:
        return m["body"].strip(), (int(m["one"]), int(m["one"]))
    a, b = int(m["a"]), int(m["b"])
    if b < a:
        raise RecipeError(f"layer range {a}-{b} is empty: write the lower layer first")
    return m["body"].strip(), (a, b)


def stage_spec(name: str) -> StageSpec:
    """The declaration of stage ``name``; RecipeError listing every stage otherwise."""
    spec = SPECS.get(name)
    if spec is None:
        raise RecipeError(f"unknown stage {name!r}. Stages: {', '.join(sorted(SPECS))} (run `kvstack recipes`)")
    return spec


def bind(spec: StageSpec, arg_text: str, text: str) -> dict[str, Any]:
    """Parameter values given in ``arg_text`` (positional, ``key=value`` or shorthand), parsed."""
    kwargs: dict[str, Any] = {}
    positional = list(spec.params)
    seen_keyword = False
    for raw in [a.strip() for a in arg_text.split(",")] if arg_text.strip() else []:
        if not raw:
            raise RecipeError(f"empty parameter in stage {text!r}")
        if "=" in raw:
            seen_keyword = True
            key, _, value = raw.partition("=")
            key = key.strip()
            param = next((p for p in spec.params if p.name == key), None)
            if param is None:
                raise RecipeError(f"stage '{spec.name}' has no parameter '{key}'; it takes: {spec.param_list()}")
            kwargs[key] = param.parse(spec.name, value.strip())
            continue
        short = spec.shorthand(raw) if spec.shorthand else None
        if short is not None:
            kwargs[short[0]] = short[1]
            continue
        if seen_keyword:
            raise RecipeError(f"stage {text!r}: positional value {raw!r} after key=value; put it first")
        free = [p for p in positional if p.name not in kwargs]
        if not free:
            raise RecipeError(f"stage '{spec.name}': too many values; it takes: {spec.param_list()}")
        kwargs[free[0].name] = free[0].parse(spec.name, raw)
        positional.remove(free[0])
    return kwargs


def parse_stage(text: str) -> BoundStage:
    """One stage such as ``int8:g64,axis=token@layers0-3``: its spec, every value (defaults filled in,
    checked) and its scope."""
    raw = text.strip()
    if not raw:
        raise RecipeError("empty stage in recipe (two '>' in a row, or a trailing '>'?)")
    body, layers = _scope(raw)
    name, _, arg_text = body.partition(":")
    spec = stage_spec(name.strip())
    bound = BoundStage(spec, {**spec.defaults(), **bind(spec, arg_text, body)}, layers, raw)
    if spec.check is not None:
        spec.check(bound)
    return bound


def parse_recipe(text: str) -> list[BoundStage]:
    """Every stage of a recipe (or preset), parsed and checked."""
    return [parse_stage(part) for part in split_recipe(text)]


def canonical_recipe(text: str) -> str:
    """What a recipe runs, written out: presets expanded, every parameter of every stage with its value (defaults
    included, sorted). Results and stored frames keyed by it stay tied to what ran when a default or a preset moves
    (``int4`` meant groups of 64 until the fifth session). It parses back to itself. ``rot=auto`` stays as written:
    what it means depends on the model's head_dim. RecipeError if the text does not parse."""
    parts = []
    for b in parse_recipe(text):
        scope = scope_text(set(range(b.layers[0], b.layers[1] + 1))) if b.layers else ""
        parts.append(f"{b.name}:{','.join(f'{k}={v}' for k, v in sorted(b.values.items()))}{scope}")
    return " > ".join(parts)


def canonical_or_none(text: str) -> str | None:
    """:func:`canonical_recipe`, or None for text that does not parse (a stage of another version, a typo):
    for the callers that key or record recipes and must not fail on one they cannot read."""
    try:
        return canonical_recipe(text)
    except RecipeError:
        return None
