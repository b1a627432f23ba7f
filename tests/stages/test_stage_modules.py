"""The explicit stage list in kvstack/stages/__init__.py is complete and exact.

Why: registration is no longer a side effect of some other import, so a new
stage module that is left out of `STAGE_MODULES` would silently be missing
from recipes; this test catches that.
"""

from __future__ import annotations

import ast
from pathlib import Path

from kvstack import stack
from kvstack.stages import STAGE_MODULES, load_builtin

STAGES_DIR = Path(stack.__file__).parent / "stages"


def _registers(path: Path) -> bool:
    """True when the module decorates a class with `@register` at top level."""
    tree = ast.parse(path.read_text())
    return any(
        isinstance(node, ast.ClassDef)
        and any(isinstance(d, ast.Name) and d.id == "register" for d in node.decorator_list)
        for node in tree.body
    )


def _dotted(path: Path) -> str:
    """``select/h2o.py`` -> ``select.h2o``: the name `STAGE_MODULES` lists a module by."""
    return ".".join(path.relative_to(STAGES_DIR).with_suffix("").parts)


def test_every_registering_module_is_listed() -> None:
    registering = {_dotted(p) for p in STAGES_DIR.rglob("*.py") if _registers(p)}
    assert {"identity", "select.h2o", "quant.kivi", "lowrank.svd", "crosslayer.share"} <= registering
    assert registering == set(STAGE_MODULES)
    assert len(STAGE_MODULES) == len(set(STAGE_MODULES))


def test_registry_comes_from_the_listed_modules() -> None:
    load_builtin()
    modules = {cls.__module__.removeprefix("kvstack.stages.") for cls in stack.REGISTRY.values()}
    assert modules == set(STAGE_MODULES)
    assert {"identity", "int4", "kivi", "h2o", "kvzip", "svd", "xkv"} <= set(stack.REGISTRY)


def test_load_builtin_is_idempotent() -> None:
    load_builtin()
    before = list(stack.REGISTRY)
    load_builtin()
    assert list(stack.REGISTRY) == before
