"""Redis staging (issue 19 item 3): an upload slower than the staging TTL used to store a
truncated cache in place of the good one, because the TTL was set on the first append only and
the commit never checked the length. Now every append refreshes the TTL, an append that finds
its key gone fails, and the commit checks the staged length; a stalled upload expires whole."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis
import torch
from transport_helpers import leftovers, tiny_llama

import kvstack
from kvstack import wire
from kvstack.errors import InputError, TransportError
from kvstack.transport.keys import CacheKey
from kvstack.transport.store import Entry
from kvstack.transport.store_redis import RedisStore

TTL = 1  # seconds: stall tests wait 2.5 x this for Redis to expire a key (lazily, on the next access)


@pytest.fixture(scope="module")
def blobs():
    model = tiny_llama()
    ctx = torch.randint(3, 128, (40,), generator=torch.Generator().manual_seed(3))
    good = wire.encode(kvstack.compress(model, ctx, "int8"))
    return good, CacheKey(kvstack.compress(model, ctx, "int8").model_fingerprint, wire.prefix_hash(ctx))


@pytest.fixture
def url(redis_url):
    redis.Redis.from_url(redis_url).flushdb()
    return redis_url


async def _upload(store: RedisStore, blob: bytes, key: CacheKey, pause_after: int | None = None) -> None:
    up = await store.begin_put()
    try:
        for i, start in enumerate(range(0, len(blob), 1000)):
            await up.write(blob[start : start + 1000])
            if i == pause_after:
                await asyncio.sleep(2.5 * TTL)
        await up.commit(Entry(key, len(blob), 40, "int8", time.time()))
    except BaseException:
        await up.abort()
        raise


async def _stored(store: RedisStore, key: CacheKey) -> bytes | None:
    opened = await store.open(key)
    if opened is None:
        return None
    return b"".join([p async for p in opened[1]])


def test_a_slow_but_steady_upload_outlives_the_ttl(url, blobs):
    """Appends keep refreshing the TTL: an upload longer than it in total still commits."""
    blob, key = blobs

    async def go():
        store = RedisStore(url, staging_ttl=3)
        up = await store.begin_put()
        step = len(blob) // 8 + 1
        for start in range(0, len(blob), step):
            await up.write(blob[start : start + step])
            await asyncio.sleep(0.5)  # 4 s in all, over the 3 s TTL, but never 3 s without a byte
        await up.commit(Entry(key, len(blob), 40, "int8", time.time()))
        got = await _stored(store, key)
        await store.close()
        return got

    assert asyncio.run(go()) == blob


def test_a_stalled_upload_fails_and_keeps_the_previous_cache(url, blobs):
    blob, key = blobs

    async def go():
        store = RedisStore(url, staging_ttl=TTL)
        await _upload(store, blob, key)
        with pytest.raises(TransportError, match="expired while the upload stalled"):
            await _upload(store, blob, key, pause_after=0)
        got = await _stored(store, key)
        await store.close()
        return got

    assert asyncio.run(go()) == blob  # not the tail of the second upload
    assert leftovers(url) == []


def test_commit_checks_the_staged_length(url, blobs):
    """The key expires after the last append, before the commit: nothing replaces the cache."""
    blob, key = blobs

    async def go():
        store = RedisStore(url, staging_ttl=TTL)
        await _upload(store, blob, key)
        up = await store.begin_put()
        await up.write(blob)
        await asyncio.sleep(2.5 * TTL)
        with pytest.raises(TransportError, match="holds 0 of the"):
            await up.commit(Entry(key, len(blob), 40, "int8", time.time()))
        await up.abort()
        with pytest.raises(TransportError, match="after 10 were written"):
            up2 = await store.begin_put()
            await up2.write(b"0123456789")
            await up2.commit(Entry(key, 11, 40, "int8", time.time()))
        await up2.abort()
        got = await _stored(store, key)
        await store.close()
        return got

    assert asyncio.run(go()) == blob


def test_staging_ttl_must_be_whole_seconds(url):
    with pytest.raises(InputError, match="staging_ttl"):
        RedisStore(url, staging_ttl=0)
