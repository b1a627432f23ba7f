"""Issue 19's server hardening, against a live server over both stores: timeouts for stalled
headers and bodies, a cap on concurrent uploads, full decode-validation before commit (the
crafted corpus of tests/wire/crafted.py is rejected and stores nothing), 401 on any malformed
Authorization, and listings that do not re-parse stored headers. Limits are set small and
waits generous, so a loaded 2-core machine does not make these flaky."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import torch
from transport_helpers import TOKEN, leftovers, tiny_llama

import kvstack
from kvstack import wire
from kvstack.errors import InputError, TransportError
from kvstack.transport import Client
from kvstack.transport.settings import ServerSettings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "wire"))
import crafted  # noqa: E402

FAST = ServerSettings(header_timeout=1.0, body_idle_timeout=1.0, body_timeout=4.0, max_uploads=2)
AUTH = f"Authorization: Bearer {TOKEN}\r\n".encode()


@pytest.fixture(scope="module")
def cache():
    model = tiny_llama()
    return kvstack.compress(model, torch.randint(3, 128, (40,), generator=torch.Generator().manual_seed(2)), "int4")


def _open(port: int, head: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.sendall(head)
    return s


def _answer(s: socket.socket, limit: float = 60.0) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    t0, got = time.monotonic(), b""
    s.settimeout(limit)
    try:
        while chunk := s.recv(65536):
            got += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    finally:
        s.close()
    return got, time.monotonic() - t0


def _put_head(length: int, auth: bytes = AUTH) -> bytes:
    return (b"PUT /v1/caches HTTP/1.1\r\nHost: x\r\n" + auth
            + f"Content-Length: {length}\r\nContent-Type: application/octet-stream\r\n\r\n".encode())


def _wait_for(cond, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


def test_a_stalled_body_gets_408_and_leaves_nothing(serve, store_url, cache):
    server = serve(store_url, settings=FAST)
    blob = wire.encode(cache)
    s = _open(server.port, _put_head(len(blob)) + blob[:1000])
    got, took = _answer(s)
    assert got.startswith(b"HTTP/1.1 408"), got[:200]
    assert b"no byte for 1 s" in got
    assert 0.9 < took < 30
    assert _wait_for(lambda: leftovers(store_url) == [])


def test_a_trickling_body_meets_the_total_timeout(serve, store_url, cache):
    server = serve(store_url, settings=ServerSettings(body_idle_timeout=5.0, body_timeout=6.0))
    blob = wire.encode(cache)
    s = _open(server.port, _put_head(len(blob)))
    t0 = time.monotonic()
    sent = 0
    try:
        while time.monotonic() - t0 < 20 and sent < len(blob):
            s.sendall(blob[sent : sent + 10])  # a byte well inside the idle timeout, forever
            sent += 10
            time.sleep(0.3)
    except (BrokenPipeError, ConnectionResetError):
        pass
    got, _ = _answer(s)
    assert got.startswith(b"HTTP/1.1 408") and b"longer than 6 s" in got, got[:200]
    assert time.monotonic() - t0 < 20
    assert _wait_for(lambda: leftovers(store_url) == [])


def test_stalled_headers_are_cut(serve, store_url):
    server = serve(store_url, settings=FAST)
    socks = [_open(server.port, b"PUT /v1/caches HTTP/1.1\r\nHost: x\r\n") for _ in range(5)]
    for s in socks:
        got, took = _answer(s)
        assert took < 30 and b"201" not in got  # closed by the server, not by our 60 s limit


def test_uploads_over_the_cap_get_503_at_once(serve, store_url, cache):
    server = serve(store_url, settings=ServerSettings(max_uploads=2, body_idle_timeout=6.0))
    blob = wire.encode(cache)
    stalled = [_open(server.port, _put_head(len(blob)) + blob[:100]) for _ in range(2)]

    async def push():
        async with Client(server.url, TOKEN) as c:
            return await c.push(blob)

    refused, t0 = None, time.monotonic()
    while refused is None and time.monotonic() - t0 < 5:  # until both stalled uploads hold their slots
        try:
            asyncio.run(push())
            time.sleep(0.1)
        except TransportError as exc:
            refused = str(exc)
    assert refused is not None and "503" in refused and "--max-uploads" in refused
    for s in stalled:
        assert _answer(s)[0].startswith(b"HTTP/1.1 408")
    assert asyncio.run(push())["bytes"] == len(blob)  # the slots are free again


@pytest.fixture(scope="module")
def hostile(cache):
    return crafted.corpus(wire.encode(cache), wire.encode(cache, codes="ans"), cache)


def test_every_crafted_file_is_rejected_and_nothing_is_stored(serve, store_url, hostile, cache):
    server = serve(store_url, settings=ServerSettings(max_header_bytes=1 << 20))

    async def go():
        codes = {}
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as s:
            for name, blob in hostile.items():
                async with s.put(f"{server.url}/v1/caches", data=blob) as resp:
                    codes[name] = (resp.status, await resp.text())
            async with s.get(f"{server.url}/v1/caches") as resp:
                listed = (await resp.json())["caches"]
        return codes, listed

    codes, listed = asyncio.run(go())
    for name, (status, text) in codes.items():
        assert status in (400, 413), (name, status, text)
        assert "corrupt" in text or "limit" in text or "over" in text, (name, text)
    assert listed == []
    assert _wait_for(lambda: leftovers(store_url) == [])


@pytest.mark.parametrize("auth", [
    b"Authorization: Bearer \xff\xfe" + TOKEN.encode() + b"\r\n",
    b"Authorization: Bearer " + TOKEN.encode() + b"\xc3\xa9\r\n",
    b"Authorization: bearer " + TOKEN.encode() + b"\r\n",
    b"Authorization: Basic dXNlcjpwYXNz\r\n",
    b"Authorization: Bearer\r\n",
    b"Authorization: \r\n",
    b"",
], ids=["latin1", "utf8-tail", "lowercase", "basic", "no-token", "empty", "absent"])
def test_malformed_authorization_is_401(serve, store_url, auth):
    server = serve(store_url)
    for head in (b"GET /v1/caches HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + auth + b"\r\n",
                 _put_head(10, auth)[:-2] + b"Connection: close\r\n\r\n" + b"0123456789"):
        got, _ = _answer(_open(server.port, head))
        assert got.startswith(b"HTTP/1.1 401"), got[:300]


def test_listing_uses_the_index_and_rereads_a_replaced_file(tmp_path, serve, cache):
    store = str(tmp_path / "store")
    server = serve(store)

    async def push_and_list(blob):
        async with Client(server.url, TOKEN) as c:
            info = await c.push(blob)
            return info, await c.list()

    info, listed = asyncio.run(push_and_list(wire.encode(cache)))
    assert [e["recipe"] for e in listed] == ["int4"]
    path = Path(store) / info["fingerprint"] / f"{info['prefix']}.{info['variant']}.kvw"
    # Scribble over the header in place, keeping inode, size and mtime: a listing that re-parsed
    # headers would now drop the file; the index still knows it.
    st = path.stat()
    with open(path, "r+b") as f:
        f.write(b"garbage!")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))

    async def listing():
        async with Client(server.url, TOKEN) as c:
            return await c.list()

    assert [e["recipe"] for e in asyncio.run(listing())] == ["int4"]
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # now it looks rewritten: read again
    assert asyncio.run(listing()) == []


def test_health_answers_while_an_upload_decodes(serve, store_url, cache):
    """Decoding runs in a worker thread: /v1/health answers while a large upload is checked."""
    server = serve(store_url)
    big = wire.encode(kvstack.compress(tiny_llama(), torch.randint(3, 128, (200,)), "identity"), tensors="raw")

    async def go():
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as s:
            async def health():
                t0 = time.monotonic()
                async with s.get(f"{server.url}/v1/health") as resp:
                    assert resp.status == 200
                return time.monotonic() - t0

            async def put():
                async with s.put(f"{server.url}/v1/caches", data=big) as resp:
                    return resp.status

            status, *times = await asyncio.gather(put(), *(health() for _ in range(5)))
            return status, times

    status, times = asyncio.run(go())
    assert status == 201 and max(times) < 10


def test_settings_are_checked():
    with pytest.raises(InputError, match="max_uploads"):
        ServerSettings(max_uploads=0)
    with pytest.raises(InputError, match="body_idle_timeout"):
        ServerSettings(body_idle_timeout=0)
    with pytest.raises(InputError, match="printable ASCII"):
        ServerSettings(token="sécret-token-long")
