"""The recipe grammar and the stage list, without torch: what ``kvstack.stack`` and ``kvstack.plan`` share.

* :mod:`~kvstack.grammar.syntax`: recipe text -> checked :class:`BoundStage` objects;
* :mod:`~kvstack.grammar.catalog`: ``SPECS``, every stage's :class:`StageSpec` (name, family,
  summary, parameters with defaults, shorthands, checks, size model), declared by family in
  :mod:`~kvstack.grammar.select`, :mod:`~kvstack.grammar.quant` and :mod:`~kvstack.grammar.lowrank`;
* :mod:`~kvstack.grammar.presets`: ``best:Nx`` / ``qa:Nx``;
* :mod:`~kvstack.grammar.sizes`, :mod:`~kvstack.grammar.storage`, :mod:`~kvstack.grammar.precision`:
  the bytes a stage's encoding holds, from its parameters and a layer's geometry.

A stage implementation (``kvstack/stages/``) names its spec with ``class X(Stage, grammar="x")``.
Importing this package must never import torch (``tests/test_grammar.py`` checks it).
"""

from __future__ import annotations

from kvstack.grammar.catalog import SPECS
from kvstack.grammar.params import Param, as_bool
from kvstack.grammar.presets import PRESETS, expand
from kvstack.grammar.spec import BoundStage, StageSpec
from kvstack.grammar.syntax import parse_recipe, parse_stage, scope_text, split_recipe, stage_spec

__all__ = [
    "PRESETS",
    "SPECS",
    "BoundStage",
    "Param",
    "StageSpec",
    "as_bool",
    "expand",
    "parse_recipe",
    "parse_stage",
    "scope_text",
    "split_recipe",
    "stage_spec",
]
