"""Look inside a model's KV cache before compressing it: ``kvstack inspect`` and ``kvstack calibrate``.

``inspect_model(model, ids)`` -> :class:`ModelReport` (per-layer outliers, ranks, cross-layer
similarity, attention sinks); ``rope_tables(model)`` gives the rotary tables ``svd:rope=pre``
needs. Importing this package loads nothing heavy; the functions import torch/transformers.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ModelReport", "inspect_cache", "inspect_model", "rope_tables", "write_plots"]

_LAZY = {
    "ModelReport": ("kvstack.inspect.report", "ModelReport"),
    "inspect_cache": ("kvstack.inspect.report", "inspect_cache"),
    "inspect_model": ("kvstack.inspect.report", "inspect_model"),
    "rope_tables": ("kvstack.inspect.rope", "rope_tables"),
    "write_plots": ("kvstack.inspect.plots", "write_plots"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'kvstack.inspect' has no attribute {name!r}")
