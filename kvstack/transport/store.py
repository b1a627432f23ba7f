"""What the server needs from a store (``store_url.open_store`` picks one from a URL).

A store keeps immutable cache blobs under :class:`CacheKey`. Writes go through an
:class:`Upload` that becomes visible only at ``commit`` (atomically: readers see the old
blob or the new one, never a mix), and ``abort`` leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

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

