"""The shared store: Redis. Blobs are immutable keys; a small hash per cache points at its blob.

* An upload APPENDs to a fresh ``blob:<uuid>`` key; every append (one MULTI with EXPIRE)
  refreshes its expiry, so a crashed or stalled upload expires *as a whole* once no byte has
  come for ``staging_ttl`` seconds. An append whose reply length is not the bytes sent so far
  means the key expired in between (APPEND would have started a fresh key holding only the
  tail): the upload fails there.
* ``commit`` runs one Lua script (atomic in Redis): check that the staged blob holds exactly
  the bytes received (else nothing changes and the upload fails), make it permanent, point
  the cache's hash at it, add the key to the index, and give the replaced blob a grace expiry
  so readers already streaming it can finish.
* Reads take the blob id once and stream it with GETRANGE, so they never mix two uploads.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

from kvstack.errors import InputError, TransportError
from kvstack.transport.keys import CacheKey
from kvstack.transport.store import READ_PIECE, Entry
from kvstack.wire.deps import require

STAGING_TTL = 3600  # seconds an unfinished upload may go without a byte before it expires
GRACE_TTL = 300  # seconds a replaced or deleted blob stays readable for streams already reading it

_COMMIT = """
if redis.call('STRLEN', KEYS[2]) ~= tonumber(ARGV[2]) then return 0 end
local old = redis.call('HGET', KEYS[1], 'blob')
redis.call('PERSIST', KEYS[2])
redis.call('HSET', KEYS[1], 'blob', ARGV[1], 'bytes', ARGV[2], 'tokens', ARGV[3], 'recipe', ARGV[4],
           'created', ARGV[5])
redis.call('SADD', KEYS[3], ARGV[6])
if old and old ~= ARGV[1] then redis.call('EXPIRE', ARGV[7] .. old, ARGV[8]) end
return 1
"""

_DELETE = """
local old = redis.call('HGET', KEYS[1], 'blob')
if not old then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('EXPIRE', ARGV[2] .. old, ARGV[3])
return 1
"""


def _redis_error(exc: Exception, url: str) -> TransportError:
    return TransportError(f"Redis at {url} failed ({exc}); check that redis-server runs there and is reachable")


def _expired(url: str, staged: int, sent: int) -> TransportError:
    return TransportError(
        f"the upload's staging key in Redis at {url} holds {staged} of the {sent} bytes sent: it expired while "
        "the upload stalled (no bytes for longer than the staging TTL); nothing was stored, push again"
    )


class RedisUpload:
    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.blob_id = uuid.uuid4().hex
        self.received = 0

    async def write(self, data: bytes) -> None:
        key = self.store.blob_key(self.blob_id)
        try:
            pipe = self.store.redis.pipeline(transaction=True)
            pipe.append(key, data)
            pipe.expire(key, self.store.staging_ttl)
            length, _ = await pipe.execute()
        except Exception as exc:  # noqa: BLE001 - any client failure is the store's failure
            raise _redis_error(exc, self.store.url) from exc
        self.received += len(data)
        if length != self.received:
            raise _expired(self.store.url, length, self.received)

    async def commit(self, entry: Entry) -> None:
        s = self.store
        if entry.nbytes != self.received:
            raise TransportError(f"commit of {entry.nbytes} bytes after {self.received} were written; nothing stored")
        try:
            if not self.received:  # an empty stream is rejected earlier; keep the invariant anyway
                await s.redis.set(s.blob_key(self.blob_id), b"", ex=s.staging_ttl)
            done = await s.redis.eval(
                _COMMIT, 3, s.meta_key(entry.key), s.blob_key(self.blob_id), s.index_key,
                self.blob_id, entry.nbytes, entry.tokens, entry.recipe, entry.created, str(entry.key),
                s.blob_key(""), GRACE_TTL,
            )
        except Exception as exc:  # noqa: BLE001
            raise _redis_error(exc, s.url) from exc
        if not done:
            staged = await s.redis.strlen(s.blob_key(self.blob_id))
            raise _expired(s.url, int(staged), self.received)

    async def abort(self) -> None:
        try:
            await self.store.redis.delete(self.store.blob_key(self.blob_id))
        except Exception:  # noqa: BLE001 - the staging key expires on its own
            pass


class RedisStore:
    """Caches in Redis at ``url`` (``redis://host:port[/db]``), under the ``kvstack:`` namespace."""

    def __init__(self, url: str, namespace: str = "kvstack:", staging_ttl: int = STAGING_TTL) -> None:
        require("redis")
        import redis.asyncio as aioredis
        if not isinstance(staging_ttl, int) or staging_ttl < 1:
            raise InputError(f"staging_ttl={staging_ttl!r}: give whole seconds, at least 1")
        self.staging_ttl = staging_ttl
        self.url = url
        self.ns = namespace
        self.redis = aioredis.from_url(url, decode_responses=False)
        self.index_key = f"{namespace}index"

    def meta_key(self, key: CacheKey) -> str:
        return f"{self.ns}cache:{key}"

    def blob_key(self, blob_id: str) -> str:
        return f"{self.ns}blob:{blob_id}"

    async def begin_put(self) -> RedisUpload:
        return RedisUpload(self)

    async def open(self, key: CacheKey) -> tuple[int, AsyncIterator[bytes]] | None:
        try:
            blob_id = await self.redis.hget(self.meta_key(key), "blob")
            if blob_id is None:
                return None
            blob = self.blob_key(blob_id.decode())
            size = int(await self.redis.strlen(blob))
        except Exception as exc:  # noqa: BLE001
            raise _redis_error(exc, self.url) from exc

        async def pieces() -> AsyncIterator[bytes]:
            for start in range(0, size, READ_PIECE):
                yield await self.redis.getrange(blob, start, min(start + READ_PIECE, size) - 1)

        return size, pieces()

    async def delete(self, key: CacheKey) -> bool:
        try:
            done = await self.redis.eval(_DELETE, 2, self.meta_key(key), self.index_key, str(key),
                                         self.blob_key(""), GRACE_TTL)
        except Exception as exc:  # noqa: BLE001
            raise _redis_error(exc, self.url) from exc
        return bool(done)

    async def list(self, fingerprint: str | None = None) -> list[Entry]:
        try:
            members = sorted(m.decode() for m in await self.redis.smembers(self.index_key))
            keys = [CacheKey.parse(m) for m in members]
            if fingerprint:
                keys = [k for k in keys if k.fingerprint == fingerprint]
            pipe = self.redis.pipeline(transaction=False)
            for k in keys:
                pipe.hgetall(self.meta_key(k))
            rows = await pipe.execute()
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise _redis_error(exc, self.url) from exc
        out = []
        for k, row in zip(keys, rows):
            if not row:
                continue  # deleted between the two reads
            out.append(Entry(k, int(row[b"bytes"]), int(row[b"tokens"]), row[b"recipe"].decode(),
                             float(row[b"created"])))
        return out

    async def ping(self) -> None:
        try:
            await self.redis.ping()
        except Exception as exc:  # noqa: BLE001
            raise _redis_error(exc, self.url) from exc

    async def close(self) -> None:
        await self.redis.aclose()


__all__ = ["RedisStore"]
