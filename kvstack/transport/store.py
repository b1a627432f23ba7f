"""What the server needs from a store, and how a store URL picks one.

A store keeps immutable cache blobs under :class:`CacheKey`. Writes go through an
:class:`Upload` that becomes visible only at ``commit`` (atomically: readers see the old
blob or the new one, never a mix), and ``abort`` leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from kvstack.errors import InputError
from kvstack.transport.keys import CacheKey

READ_PIECE = 1 << 20


@dataclass(frozen=True)
class Entry:
    """A stored cache, as listings report it."""

    key: CacheKey
    nbytes: int
    tokens: int
    recipe: str
    created: float

    def to_json(self) -> dict:
        return {"key": str(self.key), "fingerprint": self.key.fingerprint, "prefix": self.key.prefix,
                "variant": self.key.variant,
                "bytes": self.nbytes, "tokens": self.tokens, "recipe": self.recipe, "created": self.created}


class Upload(Protocol):
    async def write(self, data: bytes) -> None: ...

    async def commit(self, entry: Entry) -> None: ...

    async def abort(self) -> None: ...


class Store(Protocol):
    async def begin_put(self) -> Upload: ...

    async def open(self, key: CacheKey) -> tuple[int, AsyncIterator[bytes]] | None: ...

    async def delete(self, key: CacheKey) -> bool: ...

    async def list(self, fingerprint: str | None = None) -> list[Entry]: ...

    async def close(self) -> None: ...


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
