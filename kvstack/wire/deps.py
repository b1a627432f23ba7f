"""Optional packages of the wire format and the server, imported with a message that says
which extra to install when one is missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from kvstack.errors import MissingDependencyError

_PINS = {
    "crc32c": ("crc32c==2.9.post0", "wire"),
    "zstandard": ("zstandard==0.25.0", "wire"),
    "constriction": ("constriction==0.5.0", "wire"),
    "aiohttp": ("aiohttp==3.14.5", "serve"),
    "redis": ("redis==8.1.0", "serve"),
}


def require(module: str) -> ModuleType:
    """Import ``module`` or raise MissingDependencyError with the pip command."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pin, extra = _PINS.get(module, (module, "wire"))
        raise MissingDependencyError(
            f"{module} is not installed; install it with `pip install {pin}` (or `pip install kvstack[{extra}]`)"
        ) from exc
