"""Analytic estimate of what a kvstack recipe does to cache size, with no model and no torch.

It reads the recipe grammar of ``kvstack.stack`` itself::

    recipe := stage ( ">" stage )*
    stage  := name [ ":" param ( "," param )* ] [ "@layer" N | "@layers" A "-" B ]
    param  := value | key "=" value        (positional ones first)

and turns each stage into an effect on one layer's cache: selection stages keep a fraction of
the tokens (rounded up), ``streaming`` caps tokens at sink + window, quantizers set the bits per
element (plus fp16 scales per group), and evicting stages add kvstack's int32 position tag per
kept token (per head for score-based selection, per layer for streaming). As in kvstack, a
stage scoped with ``@`` overrides the unscoped stages of its family (select / quantize) on its
layers. This is an *estimate* from the recipe's parameters; the measured size comes from
running the recipe.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

from kvstack.errors import RecipeError
from kvstack.plan.precision import SCALE_BITS, ZERO_BITS, Precision

SELECTION = (
    "q2c",
    "snapkv",
    "h2o",
    "knorm",
    "tova",
    "random",
    "expected",
    "keydiff",
    "kvzip",
    "surprisal",
    "critical",
    "merge",
)
INT_BITS = {"int8": 8, "int4": 4, "int3": 3, "int2": 2}
CASTS = {"fp16": 16, "bf16": 16, "fp32": 32}
# Methods whose storage is not plain b-bit codes: allowed bit widths and the bits per element
# the estimate charges (see explain()).
APPROX = {
    "kivi": {2: None, 4: None},  # b bits + fp16 scale and zero per 32 elements (computed)
    "kvquant": {2: Fraction("2.32"), 3: Fraction("3.32"), 4: Fraction("4.32")},
    "gear": {2: Fraction("2.5"), 4: Fraction("4.5")},
    "cq": {1: Fraction(1), 2: Fraction(2)},
}
KNOWN = (*SELECTION, "streaming", *INT_BITS, *APPROX, *CASTS, "identity")
DEFAULT_GROUP = 64
_SCOPE = re.compile(r"^(?P<body>.*?)@(?:layer(?P<one>\d+)|layers(?P<a>\d+)-(?P<b>\d+))$")
_GROUP = re.compile(r"^g(\d+)$")


POSITIONS_NONE, POSITIONS_LAYER, POSITIONS_HEAD = 0, 1, 2
POSITION_BITS = 32  # kvstack tags each kept row with its original position (int32)


@dataclass(frozen=True)
class LayerEffect:
    """A recipe's effect on one layer: tokens kept, their precision, how many of them stay in
    the base precision (KIVI's recent tokens), and how kvstack tags kept positions (none; one
    int32 per token for the layer, as streaming does; one per token per head, as score-based
    selection does, since heads keep different tokens)."""

    tokens: int
    precision: Precision
    dense: int = 0
    positions: int = POSITIONS_NONE


@dataclass(frozen=True)
class StageEffect:
    """One stage's effect on a layer's cache: a token rule and/or a storage precision."""

    text: str
    name: str
    family: str  # "select" | "quantize" | "misc"
    layers: tuple[int, int] | None = None  # inclusive range from @layer/@layers
    keep: Fraction | None = None  # selection: fraction of tokens kept
    budget: int | None = None  # streaming: sink + window
    precision: Precision | None = None
    residual: int = 0  # KIVI: most recent tokens kept dense in the base precision
    positions: int = POSITIONS_NONE  # how kvstack tags the tokens this stage keeps

    def covers(self, index: int) -> bool:
        return self.layers is not None and self.layers[0] <= index <= self.layers[1]

    def tokens(self, tokens: int) -> int:
        if self.keep is not None and tokens:
            # kvstack's per-head budget: round half up, at least one token
            tokens = max(1, math.floor(self.keep * tokens + Fraction(1, 2)))
        if self.budget is not None:
            tokens = min(tokens, self.budget)
        return tokens

    def explain(self) -> str:
        where = "" if self.layers is None else f" on layers {self.layers[0]}-{self.layers[1]}"
        if self.name == "streaming":
            what = (
                f"keeps at most sink+window = {self.budget:,} tokens "
                "(+ one int32 position tag per kept token)"
            )
        elif self.keep is not None:
            what = (
                f"keeps {float(self.keep):.4g} of the tokens (rounded half up, at least 1; "
                "+ an int32 position tag per kept token per KV head)"
            )
        elif self.precision is not None:
            what = f"stores {self.precision.label} ({_bits_text(self.precision)})"
            if self.residual:
                what += f"; the last {self.residual} tokens stay in the cache dtype"
        else:
            what = "no change in size"
        return f"{self.text}: {what}{where}"


def _bits_text(p: Precision) -> str:
    if p.group_size:
        extra = Fraction(p.group_overhead_bits, p.group_size)
        return f"{float(p.bits + extra):.4g} bits/element incl. scales"
    return f"{float(p.bits):.4g} bits/element"


@dataclass(frozen=True)
class RecipeEstimate:
    """A parsed recipe, ready to be applied to each layer's (tokens, precision)."""

    text: str
    stages: tuple[StageEffect, ...]

    def active(self, index: int) -> list[StageEffect]:
        """Stages acting on layer ``index``: scoped ones there, and unscoped ones whose family
        has no scoped stage covering this layer."""
        out = []
        for stage in self.stages:
            if stage.layers is not None:
                if stage.covers(index):
                    out.append(stage)
                continue
            if any(o.family == stage.family and o.covers(index) for o in self.stages):
                continue
            out.append(stage)
        return out

    def apply(self, index: int, tokens: int, precision: Precision) -> LayerEffect:
        """What the stages acting on layer ``index`` do to its ``tokens`` and ``precision``."""
        residual, positions = 0, POSITIONS_NONE
        for stage in self.active(index):
            before = tokens
            tokens = stage.tokens(tokens)
            if stage.family == "select" and tokens < before:
                positions = max(positions, stage.positions)
            if stage.precision is not None:
                precision, residual = stage.precision, stage.residual
        return LayerEffect(tokens, precision, min(residual, tokens), positions)

    def check_layers(self, num_layers: int) -> None:
        for stage in self.stages:
            if stage.layers is not None and stage.layers[1] >= num_layers:
                raise RecipeError(
                    f"stage '{stage.text}' names layer {stage.layers[1]}, but the model has "
                    f"{num_layers} layers (0-{num_layers - 1})"
                )

    def explain(self) -> list[str]:
        return [stage.explain() for stage in self.stages]


def parse_recipe(text: str) -> RecipeEstimate:
    """Parse a recipe string into per-stage effects; RecipeError says what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise RecipeError(
            "empty recipe: use 'identity' for no compression, e.g. 'snapkv:0.25 > int4'"
        )
    from kvstack.presets import expand

    recipe = expand(text)  # a preset name stands for its whole recipe
    return RecipeEstimate(text.strip(), tuple(parse_stage(part) for part in recipe.split(">")))


def parse_stage(text: str) -> StageEffect:
    """One stage: ``snapkv:0.25``, ``int4:g32,sym``, ``streaming:sink=4,window=512@layers0-3``."""
    raw = text.strip()
    if not raw:
        raise RecipeError("empty stage in recipe (two '>' in a row, or a trailing '>'?)")
    body, layers = raw, None
    if "@" in raw:
        m = _SCOPE.match(raw)
        if not m:
            raise RecipeError(
                f"bad layer scope in {raw!r}: end the stage with '@layer3' or '@layers0-3'"
            )
        body = m["body"].strip()
        a, b = (int(m["one"]),) * 2 if m["one"] is not None else (int(m["a"]), int(m["b"]))
        if b < a:
            raise RecipeError(f"layer range {a}-{b} is empty: write the lower layer first")
        layers = (a, b)
    name, _, arg_text = body.partition(":")
    name = name.strip().lower()
    positional, options = _split_params(raw, arg_text)
    if name in SELECTION:
        return _selection(raw, name, layers, positional, options)
    if name == "streaming":
        return _streaming(raw, layers, positional, options)
    if name in INT_BITS:
        return _integer(raw, name, layers, positional, options)
    if name in APPROX:
        return _approx(raw, name, layers, positional, options)
    if name in CASTS or name == "identity":
        if positional or options:
            raise RecipeError(f"stage '{name}' takes no parameters, got {arg_text!r}")
        if name == "identity":
            return StageEffect(raw, name, "misc", layers)
        return StageEffect(
            raw, name, "quantize", layers, precision=Precision(name, Fraction(CASTS[name]))
        )
    raise RecipeError(f"unknown stage {name!r} in recipe. Known stages: {', '.join(KNOWN)}")


_FLAGS = {
    "sym": ("sym", "true"),
    "asym": ("sym", "false"),
    "token": ("axis", "token"),
    "channel": ("axis", "channel"),
    "rot": ("rot", "true"),
    "norot": ("rot", "false"),
}


def _split_params(raw: str, arg_text: str) -> tuple[list[str], dict[str, str]]:
    """Positional values and key=value options; ``g64``/``sym``/``asym``/``token``/``channel``
    shorthands become options wherever they appear (as in kvstack.stack)."""
    positional: list[str] = []
    options: dict[str, str] = {}
    keyword_seen = False
    if not arg_text.strip():
        return positional, options
    for part in (p.strip() for p in arg_text.split(",")):
        if not part:
            raise RecipeError(f"empty parameter in stage {raw!r}")
        if "=" in part:
            key, _, value = part.partition("=")
            options[key.strip().lower()] = value.strip()
            keyword_seen = True
        elif _GROUP.match(part.lower()):
            options["group"] = part[1:]
        elif part.lower() in _FLAGS:
            key, value = _FLAGS[part.lower()]
            options[key] = value
        elif keyword_seen:
            raise RecipeError(
                f"stage {raw!r}: positional value {part!r} after key=value; put it first"
            )
        else:
            positional.append(part)
    return positional, options


def _bind(raw: str, name: str, order: tuple[str, ...], positional, options) -> dict[str, str]:
    """Options, then positional values in kvstack's parameter order for the parameters the
    options left free; unknown keys and extra values are errors."""
    for key in options:
        if key not in order:
            raise RecipeError(
                f"stage '{name}' has no parameter {key!r}; it takes {', '.join(order)}"
            )
    free = [key for key in order if key not in options]
    if len(positional) > len(free):
        raise RecipeError(f"stage {raw!r}: too many values; {name} takes {', '.join(order)}")
    return {**dict(zip(free, positional, strict=False)), **options}


def _number(raw: str, what: str, value: str) -> Fraction:
    try:
        return Fraction(value)
    except (ValueError, ZeroDivisionError):
        raise RecipeError(f"stage {raw!r}: {what} {value!r} is not a number") from None


def _whole(raw: str, what: str, value: str, minimum: int = 0) -> int:
    number = _number(raw, what, value)
    if number.denominator != 1 or number < minimum:
        raise RecipeError(
            f"stage {raw!r}: {what} must be a whole number >= {minimum}, got {value!r}"
        )
    return int(number)


def _selection(raw: str, name: str, layers, positional, options) -> StageEffect:
    """Score-and-keep stages: ``fraction`` (first positional, default 0.5 as in kvstack) is what
    sets the size; their other parameters (sink, alloc, window, kernel, ...) only choose *which*
    tokens are kept, so the estimate ignores them."""
    if len(positional) > 1:
        raise RecipeError(
            f"stage {raw!r}: give {name}'s kept fraction first, other parameters as key=value"
        )
    value = positional[0] if positional else options.get("fraction", "0.5")
    number = _number(raw, "fraction", value)
    if not 0 < number <= 1:
        raise RecipeError(
            f"stage {raw!r}: fraction {value!r} must be in (0, 1] (the share of tokens kept)"
        )
    return StageEffect(raw, name, "select", layers, keep=number, positions=POSITIONS_HEAD)


def _streaming(raw: str, layers, positional, options) -> StageEffect:
    values = {"window": "512", "sink": "4"}
    values.update(_bind(raw, "streaming", ("window", "sink", "decode"), positional, options))
    cap = _whole(raw, "window", values["window"]) + _whole(raw, "sink", values["sink"])
    if cap == 0:
        raise RecipeError(f"stage {raw!r}: window=0 and sink=0 keep no tokens")
    return StageEffect(raw, "streaming", "select", layers, budget=cap, positions=POSITIONS_LAYER)


def _truth(raw: str, value: str) -> bool:
    low = value.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise RecipeError(f"stage {raw!r}: sym={value!r} must be true or false (or write sym/asym)")


def _integer(raw: str, name: str, layers, positional, options) -> StageEffect:
    """int8/4/3/2: ``group`` (default 64), ``axis`` (token: a group is channels of one token;
    channel: tokens of one channel), ``sym`` (default: int8 symmetric, lower widths not)."""
    # rot, seed and clip change no byte; sink's few fp16 rows and vaxis's other grouping of the values
    # are left out of the estimate (a few percent at most); vbits: keys and values each hold half the elements
    values = _bind(raw, name, ("group", "axis", "sym", "rot", "seed", "clip", "sink", "vaxis", "vbits"), positional,
                   options)
    group = _whole(raw, "group", values.get("group", str(DEFAULT_GROUP)), 1)
    axis = values.get("axis", "channel" if name == "int4" else "token").lower()  # int4's default: channel groups
    if axis not in ("token", "channel"):
        raise RecipeError(f"stage {raw!r}: axis={axis!r} is not one of token, channel")
    sym = _truth(raw, values["sym"]) if "sym" in values else name == "int8"
    if values.get("rot", "true").lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off", "auto"):
        raise RecipeError(f"stage {raw!r}: rot={values['rot']!r} must be true, false or auto (or write rot/norot)")
    if values.get("vaxis", "same").lower() not in ("same", "token", "channel"):
        raise RecipeError(f"stage {raw!r}: vaxis={values['vaxis']!r} is not one of same, token, channel")
    vbits = _whole(raw, "vbits", values.get("vbits", "0"))
    if vbits not in (0, 2, 3, 4, 8):
        raise RecipeError(f"stage {raw!r}: vbits={vbits} must be 8, 4, 3 or 2 (0: the stage's own)")
    overhead = SCALE_BITS if sym else SCALE_BITS + ZERO_BITS
    bits = Fraction(INT_BITS[name] + (vbits or INT_BITS[name]), 2)
    precision = Precision(name, bits, group, overhead, axis, tile=True)
    return StageEffect(raw, name, "quantize", layers, precision=precision)


def _approx(raw: str, name: str, layers, positional, options) -> StageEffect:
    allowed = APPROX[name]
    if name == "kivi":
        values = _bind(raw, name, ("bits", "group", "residual"), positional, options)
        values.setdefault("bits", "2")  # kvstack's default
    else:
        values = _bind(raw, name, ("bits",), positional, options)
    value = values.get("bits")
    if value is None or _number(raw, "bits", value) not in allowed:
        raise RecipeError(
            f"stage {raw!r}: {name} needs its bit width, one of "
            f"{', '.join(str(b) for b in allowed)} (e.g. {name}:{max(allowed)})"
        )
    bits = int(_number(raw, "bits", value))
    if name == "kivi":
        # keys per channel (groups of `group` tokens), values per token (groups of `group`
        # channels): one fp16 scale + zero per `group` elements either way
        group = _whole(raw, "group", values.get("group", "32"), 1)
        residual = _whole(raw, "residual", values.get("residual", "128"))
        precision = Precision(
            f"kivi{bits}", Fraction(bits), group, SCALE_BITS + ZERO_BITS, "kivi", tile=True
        )
        return StageEffect(raw, name, "quantize", layers, precision=precision, residual=residual)
    precision = Precision(f"{name}{bits}", allowed[bits])
    return StageEffect(raw, name, "quantize", layers, precision=precision)
