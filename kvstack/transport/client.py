"""The Python client of the cache server (aiohttp), streaming both ways.

    async with Client("http://127.0.0.1:8765", token) as c:
        info = await c.push(cache)                 # {"key": "<fingerprint>/<prefix>", "bytes": ...}
        cache = await c.pull(info["key"], model)   # checked against the model's fingerprint
        hit = await c.find(fingerprint, ids)       # longest stored prefix of `ids`, or None

``push``/``pull``/``find`` at module level are the same calls for synchronous code.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

from kvstack.errors import CacheFormatError, CacheNotFoundError, InputError, TransportError
from kvstack.kv import KVCache
from kvstack.transport.keys import CacheKey
from kvstack.wire.deps import require
from kvstack.wire.files import READ_BLOCK, atomic_write
from kvstack.wire.format import Limits
from kvstack.wire.hashing import prefix_hash, tokenizer_hash
from kvstack.wire.reader import StreamDecoder
from kvstack.wire.writer import encode_stream

aiohttp = require("aiohttp")

TOKEN_ENV = "KVSTACK_TOKEN"


def _key_text(key: CacheKey | str, recipe: str | None = None) -> str:
    """The key's URL form; ``recipe`` picks that recipe's cache of the key's context."""
    key = key if isinstance(key, CacheKey) else CacheKey.parse(key)
    return str(key if recipe is None else key.with_recipe(recipe))


class Client:
    """One connection pool to a kvstack server at ``url``; ``token`` defaults to $KVSTACK_TOKEN."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 600.0) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise InputError(f"server URL {url!r} must start with http:// or https://, e.g. http://127.0.0.1:8765")
        self.url = url.rstrip("/")
        self.token = token if token is not None else os.environ.get(TOKEN_ENV)
        self.timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=10)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._session = aiohttp.ClientSession(headers=headers, timeout=self.timeout)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise InputError("use the client inside `async with Client(url, token) as c:`")
        return self._session

    async def _check(self, resp: aiohttp.ClientResponse, what: str) -> None:
        if resp.status < 300:
            return
        text = (await resp.text()).strip()
        if resp.status == 401:
            raise TransportError(f"{what}: the server refused the token; pass --token or set ${TOKEN_ENV}")
        if resp.status == 404:
            raise CacheNotFoundError(f"{what}: {text}")
        if resp.status == 300:
            try:
                import json

                choices = "; ".join(f"{e['key']} ({e['recipe']})" for e in json.loads(text)["caches"])
            except (ValueError, KeyError, TypeError):
                choices = text
            raise TransportError(f"{what}: the server holds several caches of this context, one per recipe: "
                                 f"{choices}. Pass the full key or recipe=")
        raise TransportError(f"{what}: server answered {resp.status}: {text}")

    def _conn_error(self, exc: Exception, what: str) -> TransportError:
        return TransportError(f"{what}: cannot reach {self.url} ({exc}); is `kvstack serve` running there?")

    # --- operations ----------------------------------------------------------------------------
    async def push(self, source: KVCache | str | os.PathLike | bytes, *, tokenizer=None, **options) -> dict:
        """Upload a cache (a KVCache, encoded now with ``options``), a saved file, or wire bytes."""
        if isinstance(source, KVCache):
            pieces: Iterable[bytes] = encode_stream(source, tokenizer=tokenizer, **options)
        elif isinstance(source, (bytes, bytearray)):
            pieces = [bytes(source)]
        else:
            path = Path(source)
            if not path.is_file():
                raise InputError(f"no cache file at {path}; save one with kvstack.save(cache, path)")
            pieces = _file_pieces(path)

        async def body() -> AsyncIterator[bytes]:
            for piece in pieces:
                yield piece

        try:
            async with self.session.put(f"{self.url}/v1/caches", data=body()) as resp:
                await self._check(resp, "push")
                return await resp.json()
        except aiohttp.ClientError as exc:
            raise self._conn_error(exc, "push") from exc

    async def _stream(self, key: CacheKey | str, recipe: str | None = None) -> AsyncIterator[bytes]:
        text = _key_text(key, recipe)
        try:
            async with self.session.get(f"{self.url}/v1/caches/{text}") as resp:
                await self._check(resp, f"pull {text}")
                async for piece in resp.content.iter_chunked(READ_BLOCK):
                    yield piece
        except aiohttp.ClientPayloadError as exc:
            raise CacheFormatError(f"pull {text}: the download was cut short ({exc}); pull again") from exc
        except aiohttp.ClientError as exc:
            raise self._conn_error(exc, f"pull {text}") from exc

    def stream(self, key: CacheKey | str, rate: float | None = None, burst: int = 64 << 10, *,
               recipe: str | None = None) -> AsyncIterator[bytes]:
        """The cache's bytes as they arrive; with ``rate`` (bytes/s) they are released through a token
        bucket, so a loopback pull behaves like a link of that bandwidth (``kvstack bench ttft``)."""
        pieces = self._stream(key, recipe)
        if rate is None:
            return pieces
        from kvstack.transport.shaping import TokenBucket, shaped

        return shaped(pieces, TokenBucket(rate, burst))

    async def pull(self, key: CacheKey | str, model=None, *, tokenizer=None, limits: Limits | None = None,
                   recipe: str | None = None, fingerprint: str = "config") -> KVCache:
        """Download and decode a cache as it streams in; with ``model``, a foreign cache raises
        ModelError as soon as the header arrives. ``recipe`` picks that recipe's cache of the
        key's context (a key without a recipe id names the context's only cache); ``fingerprint``
        as in :func:`kvstack.wire.load`."""
        from kvstack.wire.files import expect_model

        expect = None if model is None else expect_model(model, fingerprint)
        dec = StreamDecoder(limits, expect_fingerprint=expect,
                            expect_tokenizer=None if tokenizer is None else tokenizer_hash(tokenizer))
        async for piece in self._stream(key, recipe):
            dec.feed(piece)
        return dec.finish()

    async def pull_bytes(self, key: CacheKey | str, *, recipe: str | None = None) -> bytes:
        return b"".join([piece async for piece in self._stream(key, recipe)])

    async def pull_to(self, key: CacheKey | str, path: str | os.PathLike, *, limits: Limits | None = None,
                      recipe: str | None = None) -> int:
        """Download into a file (verified, then renamed into place); returns its size."""
        dec = StreamDecoder(limits, verify_only=True)
        pieces = []
        async for piece in self._stream(key, recipe):
            dec.feed(piece)
            pieces.append(piece)
        dec.check_complete()
        return atomic_write(path, pieces)

    async def exists(self, key: CacheKey | str) -> bool:
        return await self._found("head", key)

    async def delete(self, key: CacheKey | str) -> bool:
        return await self._found("delete", key)

    async def _found(self, method: str, key: CacheKey | str) -> bool:
        """Send ``method`` for one cache: True if the server had it, False on 404, typed errors otherwise."""
        text = _key_text(key)
        try:
            async with self.session.request(method.upper(), f"{self.url}/v1/caches/{text}") as resp:
                if resp.status == 404:
                    return False
                await self._check(resp, f"{method} {text}")
                return True
        except aiohttp.ClientError as exc:
            raise self._conn_error(exc, f"{method} {text}") from exc

    async def list(self, fingerprint: str | None = None) -> list[dict]:
        params = {"fingerprint": fingerprint} if fingerprint else {}
        try:
            async with self.session.get(f"{self.url}/v1/caches", params=params) as resp:
                await self._check(resp, "list")
                return (await resp.json())["caches"]
        except aiohttp.ClientError as exc:
            raise self._conn_error(exc, "list") from exc

    async def find(self, fingerprint: str, ids, recipe: str | None = None) -> dict | None:
        """The stored cache of this model whose context is the longest prefix of ``ids`` (or None):
        how an agent finds a document someone else already prefilled. With ``recipe``, only
        caches built with that recipe; without, the newest of equally long ones."""
        import torch

        ids = torch.as_tensor(ids).reshape(-1)
        best = None
        for entry in await self.list(fingerprint):
            if recipe is not None and entry["recipe"] != recipe:
                continue
            n = entry["tokens"]
            if 0 < n <= ids.numel() and (best is None or (n, entry["created"]) > (best["tokens"], best["created"])):
                if prefix_hash(ids[:n]) == entry["prefix"]:
                    best = entry
        return best


def _file_pieces(path: Path) -> Iterable[bytes]:
    with open(path, "rb") as f:
        while block := f.read(READ_BLOCK):
            yield block


def _run(coro):
    import asyncio

    return asyncio.run(coro)


def push(url: str, source, token: str | None = None, **options) -> dict:
    """Synchronous :meth:`Client.push`."""
    async def go():
        async with Client(url, token) as c:
            return await c.push(source, **options)

    return _run(go())


def pull(url: str, key: CacheKey | str, model=None, token: str | None = None, **kwargs) -> KVCache:
    """Synchronous :meth:`Client.pull`."""
    async def go():
        async with Client(url, token) as c:
            return await c.pull(key, model, **kwargs)

    return _run(go())


def find(url: str, model_or_fingerprint, ids, token: str | None = None, recipe: str | None = None,
         fingerprint: str = "config") -> dict | None:
    """Synchronous :meth:`Client.find`; accepts a model (whose ``fingerprint`` kind, config or
    weights, names its caches) or a fingerprint."""
    if not isinstance(model_or_fingerprint, str):
        from kvstack.hf.fingerprint import model_fingerprint

        model_or_fingerprint = model_fingerprint(model_or_fingerprint, fingerprint)
    fingerprint = model_or_fingerprint

    async def go():
        async with Client(url, token) as c:
            return await c.find(fingerprint, ids, recipe)

    return _run(go())


__all__ = ["Client", "find", "pull", "push"]
