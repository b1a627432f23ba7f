"""The cache server: an aiohttp app that puts, gets, lists and deletes caches in a store.

Routes (every ``/v1/caches`` route needs ``Authorization: Bearer <token>``)::

    PUT    /v1/caches                      upload a wire stream; the key comes from its header
    PUT    /v1/caches/{fingerprint}/{prefix}   same, and the header must match the key
    GET    /v1/caches/{fingerprint}/{prefix}   stream the cache back
    HEAD   /v1/caches/{fingerprint}/{prefix}   exists? (Content-Length = size)
    DELETE /v1/caches/{fingerprint}/{prefix}
    GET    /v1/caches[?fingerprint=F]      JSON list of stored caches
    GET    /v1/health                      no auth: {"ok": true}

An upload is checked while it streams in (structure, sizes, every chunk's CRC32C, the end
frame) by a verify-only decoder, written to the store's staging area, and committed only
when the whole stream checked out: a bad checksum, a truncated body or an oversize upload
gets a 4xx and nothing is stored.
"""

from __future__ import annotations

import errno
import hmac
import time

from kvstack.errors import CacheFormatError, InputError, TransportError
from kvstack.transport.keys import CacheKey
from kvstack.transport.store import Entry, Store
from kvstack.wire.deps import require
from kvstack.wire.format import Limits
from kvstack.wire.reader import StreamDecoder

require("aiohttp")
from aiohttp import web  # noqa: E402

DEFAULT_MAX_BYTES = 2 << 30
UPLOAD_PIECE = 256 << 10

STORE = web.AppKey("store", object)
SETTINGS = web.AppKey("settings", dict)


def _error(status: type[web.HTTPException], message: str) -> web.HTTPException:
    return status(text=message + "\n", content_type="text/plain")


def _too_large(limit: int, size: int) -> web.HTTPException:
    return web.HTTPRequestEntityTooLarge(
        max_size=limit, actual_size=size, content_type="text/plain",
        text=f"upload of {size}+ bytes is over the server's limit of {limit} (kvstack serve --max-bytes)\n",
    )


def _key(request: web.Request) -> CacheKey:
    try:
        return CacheKey(request.match_info["fingerprint"], request.match_info["prefix"])
    except InputError as exc:
        raise _error(web.HTTPBadRequest, str(exc)) from None


@web.middleware
async def _auth(request: web.Request, handler):
    token = request.app[SETTINGS]["token"]
    if token is not None and request.path.startswith("/v1/caches"):
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise web.HTTPUnauthorized(
                text="missing or wrong bearer token: send 'Authorization: Bearer <token>' (kvstack --token)\n",
                headers={"WWW-Authenticate": 'Bearer realm="kvstack"'},
            )
    return await handler(request)


async def _put(request: web.Request) -> web.Response:
    store: Store = request.app[STORE]
    settings = request.app[SETTINGS]
    max_bytes = settings["max_bytes"]
    want = _key(request) if "fingerprint" in request.match_info else None
    if request.content_length is not None and request.content_length > max_bytes:
        raise _too_large(max_bytes, request.content_length)
    limits = Limits(max_stream_bytes=max_bytes)
    dec = StreamDecoder(limits, verify_only=True)
    upload = await store.begin_put()
    total = 0
    try:
        async for piece in request.content.iter_chunked(UPLOAD_PIECE):
            total += len(piece)
            if total > max_bytes:
                raise _too_large(max_bytes, total)
            dec.feed(piece)
            await upload.write(piece)
        header = dec.check_complete()
        try:
            key = CacheKey(header.model_fingerprint, header.context_sha256)
        except InputError as exc:
            raise _error(web.HTTPUnprocessableEntity, f"cannot address this cache: {exc}") from None
        if want is not None and want != key:
            raise _error(web.HTTPConflict, f"the stream is cache {key}, not {want}")
        entry = Entry(key, total, header.context_tokens, header.recipe, time.time())
        await upload.commit(entry)
    except CacheFormatError as exc:
        await upload.abort()
        raise _error(web.HTTPBadRequest, f"rejected upload: {exc}") from None
    except BaseException:
        await upload.abort()
        raise
    return web.json_response(entry.to_json(), status=201)


async def _get(request: web.Request) -> web.StreamResponse:
    key = _key(request)
    opened = await request.app[STORE].open(key)
    if opened is None:
        raise _error(web.HTTPNotFound, f"no cache {key}; push it first (kvstack push)")
    size, pieces = opened
    response = web.StreamResponse(headers={"Content-Type": "application/x-kvstack", "Content-Length": str(size)})
    if request.method == "HEAD":
        await pieces.aclose()
        return web.Response(headers=response.headers)
    try:
        await response.prepare(request)
        async for piece in pieces:
            await response.write(piece)
        await response.write_eof()
    finally:
        await pieces.aclose()
    return response


async def _delete(request: web.Request) -> web.Response:
    key = _key(request)
    if not await request.app[STORE].delete(key):
        raise _error(web.HTTPNotFound, f"no cache {key}")
    return web.Response(status=204)


async def _list(request: web.Request) -> web.Response:
    fingerprint = request.query.get("fingerprint")
    if fingerprint is not None:
        try:
            CacheKey(fingerprint, "0" * 64)
        except InputError as exc:
            raise _error(web.HTTPBadRequest, str(exc)) from None
    entries = await request.app[STORE].list(fingerprint)
    return web.json_response({"caches": [e.to_json() for e in entries]})


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


@web.middleware
async def _store_errors(request: web.Request, handler):
    try:
        return await handler(request)
    except TransportError as exc:
        raise _error(web.HTTPServiceUnavailable, str(exc)) from None


def make_app(store: Store, token: str | None, max_bytes: int = DEFAULT_MAX_BYTES) -> web.Application:
    """The aiohttp application over ``store``; ``token=None`` disables auth (tests, trusted hosts)."""
    if token is not None and (not isinstance(token, str) or len(token) < 8):
        raise InputError("the server token must be at least 8 characters; generate one with `openssl rand -hex 16`")
    app = web.Application(middlewares=[_auth, _store_errors], client_max_size=1 << 20)
    app[STORE] = store
    app[SETTINGS] = {"token": token, "max_bytes": int(max_bytes)}
    app.router.add_get("/v1/health", _health)
    app.router.add_put("/v1/caches", _put)
    app.router.add_get("/v1/caches", _list)
    path = "/v1/caches/{fingerprint}/{prefix}"
    app.router.add_put(path, _put)
    app.router.add_get(path, _get)  # aiohttp answers HEAD through the GET route
    app.router.add_delete(path, _delete)

    async def close_store(app: web.Application) -> None:
        await app[STORE].close()

    app.on_cleanup.append(close_store)
    return app


def _bind_advice(host: str, port: int, exc: OSError) -> str:
    """Why ``host:port`` could not be listened on, and what to pass instead."""
    if exc.errno == errno.EADDRINUSE:
        return (f"port {port} on {host} is already in use (another kvstack serve, or another program): "
                "pick another with --port N, or --port 0 to take any free port (the server prints which)")
    if exc.errno == errno.EACCES:
        return f"not allowed to listen on port {port} (ports below 1024 need root): pick one above 1024 with --port N"
    return f"cannot listen on {host}:{port} ({exc.strerror or exc}): check --host, or pick another --port"


async def start(store: Store, host: str, port: int, token: str | None,
                max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[web.AppRunner, int]:
    """Start listening; returns the runner (``await runner.cleanup()`` stops it) and the real port."""
    runner = web.AppRunner(make_app(store, token, max_bytes), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise TransportError(_bind_advice(host, port, exc)) from exc
    sockets = site._server.sockets if site._server is not None else []
    return runner, sockets[0].getsockname()[1] if sockets else port
