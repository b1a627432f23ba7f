"""Moving caches between processes and machines: a server (aiohttp) over a store (directory or
Redis), a client, and the content addresses they share. See ``docs/wire.md``."""

from __future__ import annotations

from kvstack.transport.client import Client, find, pull, push
from kvstack.transport.keys import CacheKey
from kvstack.transport.store import open_store

__all__ = ["CacheKey", "Client", "find", "open_store", "pull", "push"]
