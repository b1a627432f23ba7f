"""The cache server: an aiohttp app that puts, gets, lists and deletes caches in a store.

Routes (every ``/v1/caches`` route needs ``Authorization: Bearer <token>``)::

    PUT    /v1/caches                      upload a wire stream; the key comes from its header
    PUT    /v1/caches/{fingerprint}/{prefix}[/{recipe id}]   same, and the header must match the key
    GET    /v1/caches/{fingerprint}/{prefix}[/{recipe id}]   stream the cache back
    HEAD   /v1/caches/{fingerprint}/{prefix}[/{recipe id}]   exists? (Content-Length = size)
    DELETE /v1/caches/{fingerprint}/{prefix}[/{recipe id}]

A key is ``<fingerprint>/<prefix>/<recipe id>`` (see ``keys.py``): caches of one context under
different recipes live side by side. Without the recipe id, GET/HEAD/DELETE act on the one
cache of that context, or answer 300 Multiple Choices with the candidates' JSON entries.
    GET    /v1/caches[?fingerprint=F]      JSON list of stored caches
    GET    /v1/health                      no auth: {"ok": true}

An upload is decoded while it streams in (structure, sizes, every chunk's CRC32C and payload,
every layer built against the shapes its header declares, the end frame) by a decoder that
keeps no layer, in a worker thread so the event loop keeps answering; it is written to the
store's staging area and committed only when the whole stream checked out: a bad checksum,
an undecodable chunk, a truncated body or an oversize upload gets a 4xx and nothing is
stored. Slow clients meet timeouts (HTTP headers, body idle, body total) and a cap on
concurrent uploads: see :class:`~kvstack.transport.settings.ServerSettings`.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import json
import time

from kvstack.errors import CacheFormatError, InputError, TransportError
from kvstack.transport.keys import CacheKey
from kvstack.transport.settings import DEFAULT_MAX_BYTES, ServerSettings
from kvstack.transport.store import Entry, Store
from kvstack.wire.deps import require
from kvstack.wire.format import Limits
from kvstack.wire.reader import StreamDecoder

require("aiohttp")
from aiohttp import web  # noqa: E402

UPLOAD_PIECE = 256 << 10

STORE = web.AppKey("store", object)
SETTINGS = web.AppKey("settings", ServerSettings)
UPLOADS = web.AppKey("uploads", list)  # [number of uploads in progress]


def _error(status: type[web.HTTPException], message: str) -> web.HTTPException:
    return status(text=message + "\n", content_type="text/plain")


def _too_large(limit: int, size: int) -> web.HTTPException:
    return web.HTTPRequestEntityTooLarge(
        max_size=limit, actual_size=size, content_type="text/plain",
        text=f"upload of {size}+ bytes is over the server's limit of {limit} (kvstack serve --max-bytes)\n",
    )


def _key(request: web.Request) -> CacheKey:
    info = request.match_info
    try:
        return CacheKey(info["fingerprint"], info["prefix"], info.get("variant", ""))
    except InputError as exc:
        raise _error(web.HTTPBadRequest, str(exc)) from None


async def _resolve(request: web.Request) -> CacheKey:
    """The request's key; without a recipe id, the one stored cache of that context (404 if
    none, 300 with the candidates if several)."""
    key = _key(request)
    if key.variant:
        return key
    found = [e for e in await request.app[STORE].list(key.fingerprint) if e.key.context == key]
    if not found:
        raise _error(web.HTTPNotFound, f"no cache {key}; push it first (kvstack push)")
    if len(found) > 1:
        raise web.HTTPMultipleChoices(
            location=f"/v1/caches/{found[0].key}", content_type="application/json",
            text=json.dumps({"error": f"{len(found)} caches of context {key} (one per recipe): name one by its "
                             "full key <fingerprint>/<prefix>/<recipe id>, or pull with recipe=",
                             "caches": [e.to_json() for e in found]}),
        )
    return found[0].key


_UNAUTHORIZED = "missing or wrong bearer token: send 'Authorization: Bearer <token>' (kvstack --token)\n"


@web.middleware
async def _auth(request: web.Request, handler):
    token = request.app[SETTINGS].token
    if token is not None and request.path.startswith("/v1/caches"):
        given = request.headers.get("Authorization", "")
        try:  # aiohttp keeps undecodable bytes as surrogates: such a header is malformed, not a crash
            given_bytes = given.encode("ascii")
        except UnicodeEncodeError:
            given_bytes = b""
        if not hmac.compare_digest(given_bytes, f"Bearer {token}".encode()):
            raise web.HTTPUnauthorized(text=_UNAUTHORIZED, headers={"WWW-Authenticate": 'Bearer realm="kvstack"'})
    return await handler(request)


class _Stalled(Exception):
    """An upload's body missed a timeout."""


async def _answer_timeout(request: web.Request, what: str) -> web.Response:
    """408, then close the connection at once: waiting for the rest of a stalled body (aiohttp
    lingers up to 10 s for it) would hold the socket the timeout meant to free."""
    resp = web.Response(status=408, content_type="text/plain", headers={"Connection": "close"},
                        text=f"upload timed out: {what} (kvstack serve --body-idle-timeout / --body-timeout)\n")
    await resp.prepare(request)
    await resp.write_eof()
    if request.transport is not None:
        request.transport.close()
    return resp


async def _body(request: web.Request, settings: ServerSettings):
    """The upload's body in pieces, under the idle and total timeouts."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.body_timeout
    while True:
        left = deadline - loop.time()
        if left <= 0:
            raise _Stalled(f"the body took longer than {settings.body_timeout:g} s")
        try:
            piece = await asyncio.wait_for(request.content.read(UPLOAD_PIECE), min(settings.body_idle_timeout, left))
        except TimeoutError:
            if loop.time() >= deadline:
                raise _Stalled(f"the body took longer than {settings.body_timeout:g} s") from None
            raise _Stalled(f"no byte for {settings.body_idle_timeout:g} s") from None
        if not piece:
            return
        yield piece


async def _put(request: web.Request) -> web.Response:
    store: Store = request.app[STORE]
    settings = request.app[SETTINGS]
    max_bytes = settings.max_bytes
    want = _key(request) if "fingerprint" in request.match_info else None
    if request.content_length is not None and request.content_length > max_bytes:
        raise _too_large(max_bytes, request.content_length)
    uploads = request.app[UPLOADS]
    if uploads[0] >= settings.max_uploads:
        raise web.HTTPServiceUnavailable(
            text=f"the server is taking {settings.max_uploads} uploads already (kvstack serve --max-uploads); retry\n",
            content_type="text/plain", headers={"Retry-After": "1"},
        )
    uploads[0] += 1
    try:
        return await _receive(request, store, settings, want)
    except _Stalled as exc:
        return await _answer_timeout(request, str(exc))
    finally:
        uploads[0] -= 1


async def _receive(request: web.Request, store: Store, settings: ServerSettings, want: CacheKey | None):
    max_bytes = settings.max_bytes
    limits = Limits(max_stream_bytes=max_bytes, max_header_bytes=settings.max_header_bytes,
                    max_inflation=settings.max_inflation)
    dec = StreamDecoder(limits, keep_layers=False)  # decodes and builds every layer, keeps none
    upload = await store.begin_put()
    total = 0
    try:
        async for piece in _body(request, settings):
            total += len(piece)
            if total > max_bytes:
                raise _too_large(max_bytes, total)
            await asyncio.to_thread(dec.feed, piece)  # header parsing and decoding off the event loop
            await upload.write(piece)
        header = dec.check_complete()
        try:
            key = CacheKey(header.model_fingerprint, header.context_sha256).with_recipe(header.recipe)
        except InputError as exc:
            raise _error(web.HTTPUnprocessableEntity, f"cannot address this cache: {exc}") from None
        if want is not None and want != (key if want.variant else key.context):
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
    key = await _resolve(request)
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
    key = await _resolve(request)
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


def make_app(store: Store, token: str | None, max_bytes: int = DEFAULT_MAX_BYTES,
             settings: ServerSettings | None = None) -> web.Application:
    """The aiohttp application over ``store``; ``token=None`` disables auth (tests, trusted hosts).
    ``settings`` gives the timeouts and caps (its token and max_bytes are replaced by the arguments)."""
    from dataclasses import replace

    settings = replace(settings or ServerSettings(), token=token, max_bytes=int(max_bytes))
    app = web.Application(middlewares=[_auth, _store_errors], client_max_size=1 << 20)
    app[STORE] = store
    app[SETTINGS] = settings
    app[UPLOADS] = [0]
    app.router.add_get("/v1/health", _health)
    app.router.add_put("/v1/caches", _put)
    app.router.add_get("/v1/caches", _list)
    for path in ("/v1/caches/{fingerprint}/{prefix}", "/v1/caches/{fingerprint}/{prefix}/{variant}"):
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


async def start(store: Store, host: str, port: int, token: str | None, max_bytes: int = DEFAULT_MAX_BYTES,
                settings: ServerSettings | None = None) -> tuple[web.AppRunner, int]:
    """Start listening; returns the runner (``await runner.cleanup()`` stops it) and the real port."""
    app = make_app(store, token, max_bytes, settings)
    # aiohttp's keep-alive timer runs from a connection's start and from each response until the
    # next request's headers are complete: with it, a client that trickles or withholds headers
    # is cut after header_timeout, as is an idle keep-alive connection.
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=app[SETTINGS].header_timeout)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise TransportError(_bind_advice(host, port, exc)) from exc
    sockets = site._server.sockets if site._server is not None else []
    return runner, sockets[0].getsockname()[1] if sockets else port
