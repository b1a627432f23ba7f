"""Import LMCache's modules, or say how to install it: the integration is an optional extra."""

from __future__ import annotations

import importlib
from types import ModuleType

from kvstack.errors import MissingDependencyError

PIN = "lmcache==0.5.6"


def lmcache_module(name: str) -> ModuleType:
    """``import name`` (an ``lmcache.*`` module) or MissingDependencyError with the pip command."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{name} cannot be imported ({exc}); install LMCache with `pip install kvstack[lmcache]` "
            f"(it pins {PIN}, numpy<=2.2.6 and transformers>=5.4: best in a venv of its own, see docs/lmcache.md)"
        ) from exc
