"""``kvstack serve | push | pull | caches``: run a cache server and move caches through it."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from kvstack.errors import InputError

DEFAULT_PORT = 8765
SERVER_ENV = "KVSTACK_SERVER"
TOKEN_ENV = "KVSTACK_TOKEN"
STORE_ENV = "KVSTACK_STORE"


def _server_url(args) -> str:
    return args.server or os.environ.get(SERVER_ENV) or f"http://127.0.0.1:{DEFAULT_PORT}"


def _serve(args) -> int:
    from kvstack.transport.server import start
    from kvstack.transport.store import open_store

    token = args.token or os.environ.get(TOKEN_ENV)
    if token is None and not args.no_auth:
        raise InputError(
            f"give the server a secret of 8+ characters with --token (or ${TOKEN_ENV}: "
            f"export {TOKEN_ENV}=$(openssl rand -hex 16)); clients send it as a bearer token. "
            "--no-auth serves without one (trusted loopback only)"
        )
    if args.max_bytes < 1:
        raise InputError("--max-bytes must be at least 1")
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port {args.port} is not a TCP port: give 1024-65535, or 0 for any free port")

    async def main() -> None:
        store = open_store(args.store)
        if hasattr(store, "ping"):
            await store.ping()
        runner, port = await start(store, args.host, args.port, None if args.no_auth else token, args.max_bytes)
        print(f"kvstack serve: listening on http://{args.host}:{port} (store: {args.store})", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())
    return 0


def _push(args) -> int:
    from kvstack.transport.client import push

    info = push(_server_url(args), args.file, args.token)
    print(json.dumps(info) if args.json else info["key"])
    return 0


def _pull(args) -> int:
    from kvstack.transport.client import Client

    async def go() -> int:
        async with Client(_server_url(args), args.token) as c:
            return await c.pull_to(args.key, args.out)

    size = asyncio.run(go())
    print(f"{args.out}: {size} bytes")
    return 0


def _caches(args) -> int:
    from kvstack.transport.client import Client

    async def go():
        async with Client(_server_url(args), args.token) as c:
            if args.delete:
                return await c.delete(args.delete)
            return await c.list(args.fingerprint)

    out = asyncio.run(go())
    if args.delete:
        print("deleted" if out else "no such cache")
        return 0 if out else 1
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for e in out:
        print(f"{e['key']}  {e['tokens']:>7} tok  {e['bytes']:>12} B  {e['recipe']}")
    if not out:
        print("(no caches)", file=sys.stderr)
    return 0


def _client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", help=f"server URL (default ${SERVER_ENV} or http://127.0.0.1:{DEFAULT_PORT})")
    p.add_argument("--token", help=f"bearer token (default ${TOKEN_ENV})")


def register(subparsers) -> None:
    """Add ``serve``, ``push``, ``pull`` and ``caches`` to kvstack's CLI."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "serve", help="run a cache server (directory or Redis store)", formatter_class=fmt,
        description="Serve compressed caches over HTTP: agents push a prefilled context once and others pull it\n"
        "by its content address <model fingerprint>/<sha256 of the token prefix>.\n\n"
        "examples:\n"
        "  kvstack serve --store ./caches --port 8765 --token $(openssl rand -hex 16)\n"
        "  kvstack serve --store redis://127.0.0.1:6379 --max-bytes 4000000000",
    )
    p.add_argument("--store", default=os.environ.get(STORE_ENV) or str(Path.home() / ".cache" / "kvstack" / "store"),
                   help=f"a directory (created if missing) or redis://HOST:PORT[/DB] (default ${STORE_ENV} or "
                   "~/.cache/kvstack/store)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any free)")
    p.add_argument("--token", help=f"secret clients must send as a bearer token (or ${TOKEN_ENV})")
    p.add_argument("--no-auth", action="store_true", help="serve without a token (trusted loopback only)")
    p.add_argument("--max-bytes", type=int, default=2 << 30, help="largest accepted upload in bytes (default 2 GiB)")
    p.set_defaults(func=_serve)

    p = subparsers.add_parser(
        "push", help="upload a saved cache file to a server", formatter_class=fmt,
        description="Upload a cache saved with kvstack.save; prints its key.\n\n"
        "examples:\n"
        "  kvstack push doc.kvw --server http://127.0.0.1:8765\n"
        "  KVSTACK_SERVER=http://10.0.0.5:8765 kvstack push doc.kvw --json",
    )
    p.add_argument("file", help="cache file (kvstack.save / kvstack pull)")
    p.add_argument("--json", action="store_true", help="print the server's JSON answer instead of the key")
    _client_options(p)
    p.set_defaults(func=_push)

    p = subparsers.add_parser(
        "pull", help="download a cache from a server into a file", formatter_class=fmt,
        description="Download a cache by key, verify every checksum, and save it atomically.\n\n"
        "examples:\n"
        "  kvstack pull 69c6797fbba72db4/ff54c4...9cd8 --out doc.kvw",
    )
    p.add_argument("key", help="<fingerprint>/<prefix sha256>, as printed by kvstack push")
    p.add_argument("--out", required=True, help="file to write (replaced atomically)")
    _client_options(p)
    p.set_defaults(func=_pull)

    p = subparsers.add_parser(
        "caches", help="list (or delete) the caches on a server", formatter_class=fmt,
        description="List the caches a server holds, or delete one.\n\n"
        "examples:\n"
        "  kvstack caches                      # the token comes from $KVSTACK_TOKEN\n"
        "  kvstack caches --fingerprint 69c6797fbba72db4 --json\n"
        "  kvstack caches --delete 69c6797fbba72db4/ff54c4...9cd8",
    )
    p.add_argument("--fingerprint", help="only caches of this model fingerprint")
    p.add_argument("--delete", metavar="KEY", help="delete this cache instead of listing")
    p.add_argument("--json", action="store_true", help="print JSON")
    _client_options(p)
    p.set_defaults(func=_caches)
