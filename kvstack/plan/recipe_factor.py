"""Analytic estimate of what a kvstack recipe does to cache size, with no model and no torch.

The recipe is read by :mod:`kvstack.grammar` - the same grammar, stage list, presets and
parameter checks ``kvstack.compress`` uses - and each stage's size model
(:mod:`kvstack.grammar.sizes`) becomes an effect on one layer's cache: selection stages keep a
share of each head's tokens (rounded half up, at least one), ``streaming`` caps tokens at
sink + window, storage stages (quantizers, casts, low rank, cross-layer) replace how the kept
rows are encoded (a uniform quantizer after ``svd`` quantizes its coefficients), and evicting
stages add kvstack's int32 position tag per kept token (per head for score-based selection, per
layer for streaming). As in kvstack, a stage scoped with ``@`` overrides the unscoped stages of
its family on its layers. A stage whose bytes depend on the data says so (``exact`` is False,
``explain`` gives the bound); its estimate is then an upper bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kvstack.errors import BudgetError, RecipeError
from kvstack.grammar import BoundStage
from kvstack.grammar import parse_recipe as parse_stages
from kvstack.grammar.sizes import (
    POSITION_BITS,
    POSITIONS_HEAD,
    POSITIONS_LAYER,
    POSITIONS_NONE,
    Size,
    head_tokens,
)
from kvstack.grammar.storage import NOT_EVICTED, Kept

__all__ = [
    "POSITIONS_HEAD", "POSITIONS_LAYER", "POSITIONS_NONE", "POSITION_BITS", "LayerEffect", "RecipeEstimate",
    "StageEffect", "parse_recipe",
]


@dataclass(frozen=True)
class LayerEffect:
    """A recipe's effect on one layer: tokens kept per head, how they are stored (a Precision or a
    storage model of :mod:`kvstack.grammar.storage`), how kvstack tags kept positions (none; one
    int32 per token for the layer, as streaming does; one per token per head, as score-based
    selection does) and which positions a selection left when the storage stage ran."""

    tokens: int
    precision: Any
    positions: int = POSITIONS_NONE
    kept: Kept = NOT_EVICTED


@dataclass(frozen=True)
class StageEffect:
    """One stage of a recipe: where it acts and its size model."""

    text: str
    name: str
    family: str
    layers: tuple[int, int] | None
    size: Size

    @classmethod
    def of(cls, bound: BoundStage) -> StageEffect:
        return cls(bound.text, bound.name, bound.family, bound.layers, bound.spec.size(bound))

    def covers(self, index: int) -> bool:
        return self.layers is not None and self.layers[0] <= index <= self.layers[1]

    def tokens(self, tokens: int) -> int:
        if self.size.keep is not None:
            tokens = head_tokens(self.size.keep, tokens)
        if self.size.budget is not None:
            tokens = min(tokens, self.size.budget)
        return tokens

    def explain(self) -> str:
        where = "" if self.layers is None else f" on layers {self.layers[0]}-{self.layers[1]}"
        text = f"{self.text}: {self.size.what}{where}"
        return text if self.size.exact else f"{text} [data-dependent: {self.size.bound}]"


@dataclass(frozen=True)
class RecipeEstimate:
    """A parsed recipe, ready to be applied to each layer's (tokens, precision)."""

    text: str
    stages: tuple[StageEffect, ...]
    notes: tuple[str, ...] = ()  # where stages together depend on the data (see _sink_notes)

    @property
    def exact(self) -> bool:
        """False when bytes depend on the data (the estimate is then an upper bound)."""
        return all(stage.size.exact for stage in self.stages) and not self.notes

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

    def apply(self, index: int, tokens: int, precision: Any) -> LayerEffect:
        """What the stages acting on layer ``index`` do to its ``tokens`` and storage ``precision``."""
        storage, positions, kept, stored_kept = precision, POSITIONS_NONE, NOT_EVICTED, NOT_EVICTED
        for stage in self.active(index):
            before = tokens
            tokens = stage.tokens(tokens)
            if stage.family == "select" and (tokens < before or stage.size.evicts):
                positions, kept = max(positions, stage.size.positions), _after(kept, stage.size)
            new = stage.size.storage
            if new is None:
                continue
            if positions == POSITIONS_HEAD and getattr(new, "needs_same_tokens", False):
                raise RecipeError(
                    f"{stage.text}: layer {index} keeps different tokens in different heads (per-head selection), "
                    "so one vector per token cannot hold them; after per-head selection use svd (per head), or "
                    "select with streaming (the same tokens in every head)"
                )
            inner = getattr(storage, "with_coefficients", None) if stage.size.coefficients else None
            storage, stored_kept = (inner(new) if inner else None) or new, kept
        return LayerEffect(tokens, storage, positions, stored_kept)

    def check_layers(self, num_layers: int) -> None:
        for stage in self.stages:
            if stage.layers is not None and stage.layers[1] >= num_layers:
                raise RecipeError(
                    f"stage '{stage.text}' names layer {stage.layers[1]}, but the model has "
                    f"{num_layers} layers (0-{num_layers - 1})"
                )

    def explain(self) -> list[str]:
        return [stage.explain() for stage in self.stages] + [f"[data-dependent: {note}]" for note in self.notes]


def _after(kept: Kept, size: Size) -> Kept:
    """What a layer holds after one more selection: the surely-kept prefix is the smaller one."""
    if not kept.evicted:
        return Kept(True, size.prefix, size.contiguous)
    prefix = None if kept.prefix is None or size.prefix is None else min(kept.prefix, size.prefix)
    return Kept(True, prefix, kept.contiguous and size.contiguous)


def _sink_notes(stages: tuple[StageEffect, ...]) -> tuple[str, ...]:
    """Storage stages that keep their first positions exact (or dense) after a selection that may have
    evicted some of them in some heads: those rows are counted as kept, an upper bound."""
    notes, sure = [], None
    for stage in stages:
        if stage.family == "select":
            sure = stage.size.sure if sure is None else min(sure, stage.size.sure)
        sink = getattr(stage.size.storage, "sink", 0)
        if sure is not None and sink > sure:
            notes.append(f"{stage.text} keeps the first {sink} positions apart, but an earlier selection keeps only "
                         f"{sure} of them for sure; counted as kept")
    return tuple(notes)


def parse_recipe(text: str) -> RecipeEstimate:
    """Parse a recipe (or preset) into per-stage effects; RecipeError says what is wrong."""
    try:
        stages = parse_stages(text)
    except BudgetError as exc:  # the planner reports every bad recipe as a RecipeError
        raise RecipeError(str(exc)) from exc
    effects = tuple(StageEffect.of(stage) for stage in stages)
    return RecipeEstimate(text.strip(), effects, _sink_notes(effects))
