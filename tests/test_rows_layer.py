"""The storage layer: kvstack.rows loads on its own, declares every built-in wire encoding,
and the old module paths under kvstack.stages still give the very same objects."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kvstack.rows
from kvstack.rows import ENCODINGS, DenseRows, QuantRows
from kvstack.wire.encodings import encoding_for, encoding_of_kind

OLD_TO_NEW = {
    "quant_rows": "quant",
    "quant_pack": "pack",
    "quant_split": "split",
    "quant_rotate": "rotate",
    "quant_groups": "groups",
}


def _public_names(module: str) -> set[str]:
    """Functions, classes and constants a module defines (not what it imports), minus private ones and WIRE."""
    tree = ast.parse(Path(importlib.import_module(module).__file__).read_text())
    names = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    names |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    return {n for n in names if not n.startswith("_") and n != "WIRE"}


def _fresh_python(*lines: str) -> list[str]:
    """What a fresh interpreter prints running ``lines`` (nothing of kvstack imported before)."""
    out = subprocess.run([sys.executable, "-c", "\n".join(lines)], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def test_rows_load_without_the_data_model_stages_or_wire() -> None:
    above = "('kvstack.kv', 'kvstack.stages', 'kvstack.wire', 'kvstack.kernels', 'kvstack.hf', 'kvstack.stack')"
    loaded = f"print(sorted(m for m in sys.modules if m.startswith({above})))"
    printed = _fresh_python("import sys, kvstack.rows", loaded)
    assert printed == ["[]"]


def test_the_wire_knows_every_declared_encoding_without_loading_stages() -> None:
    printed = _fresh_python(
        "import sys",
        "from kvstack.wire.encodings import encoding_of_kind",
        "print(sorted(encoding_of_kind(k).cls.__name__ for k in ('dense', 'quant', 'split', 'hadamard')))",
        "print(sorted(m for m in sys.modules if m.startswith('kvstack.stages')))",
    )
    assert printed == ["['DenseRows', 'HadamardRows', 'QuantRows', 'SplitRows']", "[]"]


@pytest.mark.parametrize("declared", ENCODINGS, ids=lambda e: e.kind)
def test_each_container_declares_its_encoding_in_its_own_module(declared) -> None:
    module = importlib.import_module(declared.cls.__module__)
    assert module.__name__.startswith("kvstack.rows.") and module.WIRE is declared
    assert encoding_of_kind(declared.kind) is encoding_for(_sample(declared.cls))
    assert encoding_for(_sample(declared.cls)).cls is declared.cls


def _sample(cls: type):
    rows = torch.randn(6, 8)
    if cls is DenseRows:
        return DenseRows(rows)
    quant = QuantRows.quantize(rows, 4, 4)
    if cls is QuantRows:
        return quant
    if cls is kvstack.rows.SplitRows:
        return kvstack.rows.SplitRows(quant, DenseRows(rows[:0]), ((False, 6),))
    return kvstack.rows.HadamardRows(quant, 3, torch.float32)


def test_declared_kinds_are_unique() -> None:
    kinds = [e.kind for e in ENCODINGS]
    assert len(set(kinds)) == len(kinds) == 4


@pytest.mark.parametrize("old, new", sorted(OLD_TO_NEW.items()))
def test_old_stage_paths_re_export_the_same_objects(old: str, new: str) -> None:
    shim = importlib.import_module(f"kvstack.stages.{old}")
    moved = importlib.import_module(f"kvstack.rows.{new}")
    assert set(shim.__all__) == _public_names(f"kvstack.rows.{new}")
    for name in shim.__all__:
        assert getattr(shim, name) is getattr(moved, name), name


def test_the_data_model_names_the_same_containers() -> None:
    import kvstack.kv as kv

    assert kv.DenseRows is kvstack.rows.DenseRows
    assert kv.Encoded is kvstack.rows.Encoded
    assert kv.tensor_nbytes is kvstack.rows.tensor_nbytes
