"""What the grammar knows of one stage: its name, family, parameters, checks and size model.

A :class:`StageSpec` is the torch-free half of a stage. The implementation in
``kvstack/stages/`` names its spec (``class Gear(Stage, grammar="gear")``) and takes name,
family, summary, parameters, shorthands and checks from it, so the recipe parser of
``kvstack.stack`` and the planner's estimate read one declaration and cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvstack.grammar.params import Param

Shorthand = Callable[[str], "tuple[str, Any] | None"]
Check = Callable[[Any], None]


@dataclass(frozen=True)
class StageSpec:
    """One stage's declaration. ``check`` reads the bound values as attributes (``s.fraction``) and
    raises RecipeError/BudgetError; ``size`` maps them to a :class:`kvstack.grammar.sizes.Size`."""

    name: str
    family: str
    summary: str
    params: tuple[Param, ...] = ()
    shorthand: Shorthand | None = None
    check: Check | None = None
    size: Callable[[Any], Any] | None = None

    def param_list(self) -> str:
        return ", ".join(f"{p.name}={p.default}" for p in self.params) or "(no parameters)"

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}


def checks(*parts: Check) -> Check:
    """One check that runs ``parts`` in order (a family's common checks, then the stage's own)."""

    def run(s: Any) -> None:
        for part in parts:
            part(s)

    return run


@dataclass
class BoundStage:
    """A parsed stage: its spec, every parameter's value (defaults filled in) and its layer scope.

    Parameter values read as attributes (``bound.fraction``), as they do on a Stage, so the
    spec's ``check`` and ``size`` take either."""

    spec: StageSpec
    values: dict[str, Any]
    layers: tuple[int, int] | None = None  # inclusive range from @layer / @layers
    text: str = ""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def family(self) -> str:
        return self.spec.family

    def __getattr__(self, key: str) -> Any:
        values = self.__dict__.get("values", {})
        if key in values:
            return values[key]
        raise AttributeError(key)
