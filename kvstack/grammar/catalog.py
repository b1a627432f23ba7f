"""The one list of stages: every name a recipe may use, in the order ``kvstack recipes`` shows families.

Every built-in name here has one registered implementation (``tests/test_grammar.py``), so the
planner, which reads only this list, accepts exactly the stages ``kvstack.compress`` runs. A user's
own stage is added at run time by :func:`declare` (``kvstack.stack.register`` does it for a stage
class that carries its own name, family, summary and parameters).
"""

from __future__ import annotations

from typing import Any

from kvstack.errors import RecipeError
from kvstack.grammar import lowrank, quant, select
from kvstack.grammar.spec import StageSpec

SPECS: dict[str, StageSpec] = {spec.name: spec for spec in (*quant.SPECS, *select.SPECS, *lowrank.SPECS)}


def declare(spec: StageSpec) -> StageSpec:
    """Add a user's stage to the list (a name already there is refused). Without a ``size`` model,
    ``kvstack plan`` refuses a recipe that uses it with a RecipeError saying so."""
    if spec.name in SPECS:
        raise RuntimeError(f"stage {spec.name!r} is declared twice")
    if spec.size is None:
        spec = StageSpec(spec.name, spec.family, spec.summary, spec.params, spec.shorthand, spec.check,
                         _unsized(spec.name))
    SPECS[spec.name] = spec
    return spec


def _unsized(name: str):
    def size(_bound: Any):
        raise RecipeError(f"kvstack plan has no size model for the user stage {name!r}: declare it with one "
                          "(kvstack.grammar.catalog.declare(StageSpec(..., size=...)))")

    return size
