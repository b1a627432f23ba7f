"""Mixed precision by layer, found by measurement: which layers tolerate few bits.

``measure`` quantizes one layer at a time at each candidate width and measures how far the
model's next-token distribution over a held-out continuation moves (KL to the full cache);
``allocate`` picks per-layer widths that fit a byte budget with the least total damage.
Names load lazily so the CLI starts without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "Allocation": "knapsack", "allocate": "knapsack", "compose_recipe": "knapsack",
    "Probe": "sensitivity", "Sensitivity": "sensitivity", "measure": "sensitivity",
}
__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(importlib.import_module(f"kvstack.diagnose.{_NAMES[name]}"), name)
    raise AttributeError(f"module 'kvstack.diagnose' has no attribute {name!r}")
