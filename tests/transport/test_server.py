"""The cache server over both stores: exact round trips, auth, rejected uploads store nothing,
size limits, no path traversal, persistence across restarts, content addressing by prefix."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest
import torch
from transport_helpers import TOKEN, leftovers, tiny_llama

import kvstack
from kvstack import wire
from kvstack.errors import CacheNotFoundError, InputError, ModelError, TransportError
from kvstack.transport import CacheKey, Client
from kvstack.transport.keys import recipe_variant


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


@pytest.fixture(scope="module")
def context():
    return torch.randint(3, 128, (40,), generator=torch.Generator().manual_seed(11))


@pytest.fixture(scope="module")
def cache(model, context):
    return kvstack.compress(model, context, "kivi:2,g8,residual=4")


def run(coro):
    return asyncio.run(coro)


async def _raw(method: str, url: str, data=None, token: str | None = TOKEN) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s, s.request(method, url, data=data, headers=headers) as resp:
        return resp.status, await resp.text()


def test_push_pull_is_exact_and_generates_the_same(serve, store_url, model, context, cache):
    server = serve(store_url)

    async def go():
        async with Client(server.url, TOKEN) as c:
            info = await c.push(cache)
            variant = recipe_variant(cache.recipe)
            assert info["key"] == f"{cache.model_fingerprint}/{wire.prefix_hash(context)}/{variant}"
            assert info["tokens"] == 40 and info["recipe"] == cache.recipe
            return await c.pull(info["key"], model), await c.pull_bytes(info["key"]), info

    pulled, blob, info = run(go())
    assert wire.cache_differences(cache, pulled) == []
    assert len(blob) == info["bytes"]
    q = torch.tensor([5, 6, 7])
    assert torch.equal(kvstack.generate(model, cache, q, 8), kvstack.generate(model, pulled, q, 8))


def test_agents_find_a_shared_prefix(serve, store_url, cache, context):
    server = serve(store_url)
    longer = torch.cat([context, torch.tensor([9, 9, 9])])

    async def go():
        async with Client(server.url, TOKEN) as c:
            assert await c.find(cache.model_fingerprint, longer) is None
            info = await c.push(cache)
            hit = await c.find(cache.model_fingerprint, longer)
            miss = await c.find(cache.model_fingerprint, torch.cat([torch.tensor([1]), context]))
            return info, hit, miss

    info, hit, miss = run(go())
    assert hit is not None and hit["key"] == info["key"] and hit["tokens"] == 40
    assert miss is None


def test_reads_and_writes_need_the_token(serve, store_url, cache):
    server = serve(store_url)
    blob = wire.encode(cache)
    key = f"{cache.model_fingerprint}/{wire.prefix_hash(cache.context_ids)}"
    for token in (None, "wrong-token-000"):
        assert run(_raw("PUT", f"{server.url}/v1/caches", blob, token))[0] == 401
        assert run(_raw("GET", f"{server.url}/v1/caches", None, token))[0] == 401
        assert run(_raw("GET", f"{server.url}/v1/caches/{key}", None, token))[0] == 401
        assert run(_raw("DELETE", f"{server.url}/v1/caches/{key}", None, token))[0] == 401
    assert run(_raw("GET", f"{server.url}/v1/health", None, None)) == (200, '{"ok": true}')
    assert run(_raw("PUT", f"{server.url}/v1/caches", blob))[0] == 201
    with pytest.raises(TransportError, match="refused the token"):
        run(_list(server.url, "wrong-token-000"))


async def _list(url: str, token: str):
    async with Client(url, token) as c:
        return await c.list()


def test_corrupt_or_truncated_uploads_are_rejected_and_store_nothing(serve, store_url, cache):
    server = serve(store_url)
    blob = wire.encode(cache)
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0x10
    for bad in (bytes(flipped), blob[: len(blob) // 3], blob[:-1], b"not a cache at all", blob + b"junk"):
        status, text = run(_raw("PUT", f"{server.url}/v1/caches", bad))
        assert status == 400, text
        assert "rejected upload" in text
    assert run(_list(server.url, TOKEN)) == []
    assert leftovers(store_url) == []


def test_uploads_over_the_size_limit_get_413(serve, store_url, cache):
    blob = wire.encode(cache)
    server = serve(store_url, max_bytes=len(blob) - 1)
    status, text = run(_raw("PUT", f"{server.url}/v1/caches", blob))
    assert status == 413 and "limit" in text

    async def chunked():  # no Content-Length: the limit must hold while streaming too
        for i in range(0, len(blob), 1000):
            yield blob[i : i + 1000]

    status, _ = run(_raw("PUT", f"{server.url}/v1/caches", chunked()))
    assert status == 413
    assert run(_list(server.url, TOKEN)) == []
    assert leftovers(store_url) == []


def test_keys_cannot_traverse_paths(serve, store_url, cache, tmp_path):
    server = serve(store_url)
    secret = tmp_path / "secret.kvw"
    secret.write_bytes(b"do not serve me")
    for path in ("..%2F..%2Fsecret/x", "../../etc/passwd", "%2e%2e/%2e%2e", "abcdef12/..%2Fsecret",
                 "abcdef12/" + "0" * 63 + "/", "ABCDEF12/" + "0" * 64):
        status, text = run(_raw("GET", f"{server.url}/v1/caches/{path}"))
        assert status in (400, 404) and "do not serve" not in text
    with pytest.raises(InputError):
        CacheKey.parse("../" + "0" * 64)
    with pytest.raises(InputError):
        CacheKey("abcdef12", "../" + "0" * 61)


def test_put_to_a_named_key_must_match_the_stream(serve, store_url, cache):
    server = serve(store_url)
    blob = wire.encode(cache)
    other = f"{cache.model_fingerprint}/{'1' * 64}"
    status, text = run(_raw("PUT", f"{server.url}/v1/caches/{other}", blob))
    assert status == 409 and "not" in text
    right = f"{cache.model_fingerprint}/{wire.prefix_hash(cache.context_ids)}"
    assert run(_raw("PUT", f"{server.url}/v1/caches/{right}", blob))[0] == 201


def test_caches_persist_across_server_restarts(serve, store_url, cache):
    first = serve(store_url)
    info = run(_push(first.url, cache))
    first.stop()
    second = serve(store_url)

    async def go():
        async with Client(second.url, TOKEN) as c:
            return await c.pull(info["key"]), await c.list()

    pulled, listed = run(go())
    assert wire.cache_differences(cache, pulled) == []
    assert [e["key"] for e in listed] == [info["key"]]


async def _push(url, cache):
    async with Client(url, TOKEN) as c:
        return await c.push(cache)


def test_delete_and_missing_keys(serve, store_url, cache):
    server = serve(store_url)

    async def go():
        async with Client(server.url, TOKEN) as c:
            info = await c.push(cache)
            assert await c.exists(info["key"])
            assert await c.delete(info["key"])
            assert not await c.exists(info["key"])
            assert not await c.delete(info["key"])
            with pytest.raises(CacheNotFoundError):
                await c.pull(info["key"])

    run(go())


def test_pull_with_the_wrong_model_fails_at_the_header(serve, store_url, cache):
    server = serve(store_url)
    info = run(_push(server.url, cache))
    other = tiny_llama()
    other.config.rope_theta = 77.0

    async def go():
        async with Client(server.url, TOKEN) as c:
            await c.pull(info["key"], other)

    with pytest.raises(ModelError, match="another model"):
        run(go())


def test_an_interrupted_upload_leaves_nothing(serve, store_url, cache):
    server = serve(store_url)
    blob = wire.encode(cache)
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(
            f"PUT /v1/caches HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Length: {len(blob)}\r\n\r\n".encode() + blob[: len(blob) // 2]
        )
    # the connection is gone mid-body: give the server time to notice, then wait for its cleanup
    asyncio.run(asyncio.sleep(0.3))
    for _ in range(100):
        if not leftovers(store_url):
            break
        asyncio.run(asyncio.sleep(0.05))
    assert leftovers(store_url) == []
    assert run(_list(server.url, TOKEN)) == []


def test_server_refuses_a_short_token(tmp_path):
    from kvstack.transport.server import make_app
    from kvstack.transport.store_url import open_store

    with pytest.raises(InputError, match="at least 8"):
        make_app(open_store(str(tmp_path)), "short")


def test_unreachable_server_is_a_transport_error():
    from transport_helpers import free_port

    async def go():
        async with Client(f"http://127.0.0.1:{free_port()}", TOKEN) as c:
            await c.list()

    with pytest.raises(TransportError, match="cannot reach"):
        run(go())
