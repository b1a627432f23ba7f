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


def read_token(args) -> str | None:
    """The token from ``--token``, ``--token-file`` (first line) or ``$KVSTACK_TOKEN``, in that order.
    ``--token`` shows in the process list; the file and the variable do not."""
    if getattr(args, "token", None):
        return args.token
    path = getattr(args, "token_file", None)
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"--token-file {path}: cannot read it ({exc})") from None
        token = text.splitlines()[0].strip() if text.strip() else ""
        if not token:
            raise InputError(f"--token-file {path} is empty; write the token on its first line")
        return token
    return os.environ.get(TOKEN_ENV) or None


NO_AUTH_WARNING = """\
WARNING: kvstack serve is running WITHOUT AUTHENTICATION (--no-auth).
WARNING: anyone who can reach {where} can read, replace and delete every cache in {store}.
WARNING: use this only on a trusted loopback; otherwise pass --token-file FILE or set ${env}."""


def _serve(args) -> int:
    from kvstack.transport.server import start
    from kvstack.transport.settings import ServerSettings
    from kvstack.transport.store_url import open_store

    token = None if args.no_auth else read_token(args)
    if token is None and not args.no_auth:
        raise InputError(
            f"give the server a secret of 8+ characters with --token-file FILE, ${TOKEN_ENV} (e.g. "
            f"export {TOKEN_ENV}=$(openssl rand -hex 16)) or --token SECRET (visible in the process list); clients "
            "send it as a bearer token. --no-auth serves without one (trusted loopback only)"
        )
    if args.max_bytes < 1:
        raise InputError("--max-bytes must be at least 1")
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port {args.port} is not a TCP port: give 1024-65535, or 0 for any free port")
    settings = ServerSettings(
        token=token, max_bytes=args.max_bytes, max_uploads=args.max_uploads, header_timeout=args.header_timeout,
        body_idle_timeout=args.body_idle_timeout, body_timeout=args.body_timeout,
        max_header_bytes=args.max_header_bytes,
    )
    if args.no_auth:
        print(NO_AUTH_WARNING.format(where=f"http://{args.host}:{args.port}", store=args.store, env=TOKEN_ENV),
              file=sys.stderr, flush=True)

    async def main() -> None:
        store = open_store(args.store)
        if hasattr(store, "ping"):
            await store.ping()
        runner, port = await start(store, args.host, args.port, token, args.max_bytes, settings)
        print(f"kvstack serve: listening on http://{args.host}:{port} (store: {args.store})"
              + ("  [NO AUTH]" if args.no_auth else ""), flush=True)
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

    info = push(_server_url(args), args.file, read_token(args))
    print(json.dumps(info) if args.json else info["key"])
    return 0


def _pull(args) -> int:
    from kvstack.transport.client import Client

    async def go() -> int:
        async with Client(_server_url(args), read_token(args)) as c:
            return await c.pull_to(args.key, args.out, recipe=args.recipe)

    size = asyncio.run(go())
    print(f"{args.out}: {size} bytes")
    return 0


def _caches(args) -> int:
    from kvstack.transport.client import Client

    async def go():
        async with Client(_server_url(args), read_token(args)) as c:
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
    p.add_argument("--token", help=f"bearer token (default ${TOKEN_ENV}; visible in the process list)")
    p.add_argument("--token-file", help="read the bearer token from the first line of this file")


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
    from kvstack.transport.settings import ServerSettings

    d = ServerSettings()
    p.add_argument("--token", help=f"secret clients must send as a bearer token (visible in the process list: "
                   f"prefer --token-file or ${TOKEN_ENV})")
    p.add_argument("--token-file", help="read the secret from the first line of this file")
    p.add_argument("--no-auth", action="store_true", help="serve without a token (trusted loopback only; warns)")
    p.add_argument("--max-bytes", type=int, default=d.max_bytes,
                   help="largest accepted upload in bytes (default 2 GiB)")
    p.add_argument("--max-uploads", type=int, default=d.max_uploads,
                   help=f"uploads at once; more get 503 + Retry-After (default {d.max_uploads})")
    p.add_argument("--header-timeout", type=float, default=d.header_timeout,
                   help=f"seconds a connection may take to send a request's headers, or stay idle (default "
                   f"{d.header_timeout:g})")
    p.add_argument("--body-idle-timeout", type=float, default=d.body_idle_timeout,
                   help=f"seconds an upload may go without a byte (default {d.body_idle_timeout:g})")
    p.add_argument("--body-timeout", type=float, default=d.body_timeout,
                   help=f"seconds an upload's body may take in all (default {d.body_timeout:g})")
    p.add_argument("--max-header-bytes", type=int, default=d.max_header_bytes,
                   help=f"largest cache header accepted in an upload (default {d.max_header_bytes >> 20} MiB)")
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
    p.add_argument("key", help="<fingerprint>/<prefix sha256>[/<recipe id>], as printed by kvstack push")
    p.add_argument("--out", required=True, help="file to write (replaced atomically)")
    p.add_argument("--recipe", help="the cache of this recipe, when the context has several (kvstack caches)")
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
