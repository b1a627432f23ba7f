"""Moving caches between processes and machines: a server (aiohttp) over a store (directory or
Redis), a client, and the content addresses they share. See ``docs/wire.md``.

Names load lazily, so ``kvstack --help`` and ``kvstack plan`` start without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "Client": "client", "find": "client", "pull": "client", "push": "client",
    "CacheKey": "keys", "recipe_variant": "keys", "open_store": "store_url", "ServerSettings": "settings",
}
__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(importlib.import_module(f"kvstack.transport.{_NAMES[name]}"), name)
    raise AttributeError(f"module 'kvstack.transport' has no attribute {name!r}")
