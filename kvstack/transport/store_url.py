"""How a store URL picks a store: a directory, or Redis.

Apart from ``store.py`` because the backends import ``store.py`` (``Entry``, ``READ_PIECE``); the
backends load lazily here, so a directory store never imports the Redis client.
"""

from __future__ import annotations

from kvstack.errors import InputError
from kvstack.transport.store import Store


def open_store(url: str) -> Store:
    """``redis://host:port[/db]`` -> RedisStore; anything else is a directory -> DirectoryStore."""
    if not isinstance(url, str) or not url:
        raise InputError("--store needs a directory path or redis://HOST:PORT")
    if url.startswith(("redis://", "rediss://", "unix://")):
        from kvstack.transport.store_redis import RedisStore

        return RedisStore(url)
    if "://" in url:
        raise InputError(f"store {url!r}: use a directory path or redis://HOST:PORT")
    from kvstack.transport.store_dir import DirectoryStore

    return DirectoryStore(url)
