"""The one list of stages: every name a recipe may use, in the order ``kvstack recipes`` shows families.

``kvstack.stack.register`` refuses an implementation whose name is not here, and every name here
has one registered implementation (``tests/test_grammar.py``), so the planner, which reads only
this list, accepts exactly the stages ``kvstack.compress`` runs.
"""

from __future__ import annotations

from kvstack.grammar import lowrank, quant, select
from kvstack.grammar.spec import StageSpec

SPECS: dict[str, StageSpec] = {spec.name: spec for spec in (*quant.SPECS, *select.SPECS, *lowrank.SPECS)}
