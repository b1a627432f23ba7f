"""A real link for benchmarks: a ``kvstack serve`` process on 127.0.0.1 and a client that pulls
through a token bucket.

The server is a separate process (as in production, it does not share the receiver's
interpreter lock); bytes cross a real TCP socket as HTTP. Shaping happens on the receiving
side: bytes are released to the decoder no faster than the set rate, so decoding overlaps the
transfer exactly as it would on a slow link.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kvstack.errors import InputError, TransportError


@dataclass(frozen=True)
class Transfer:
    """One pull: bytes received and seconds from the request to the last byte consumed."""

    bytes: int
    seconds: float

    @property
    def rate(self) -> float:
        """Achieved bytes per second."""
        return self.bytes / max(self.seconds, 1e-12)


class LoopbackLink:
    """``kvstack serve`` (directory store in a temporary directory) plus a shaped client.

    Use as a context manager; ``push(blob)`` stores wire bytes and returns their key,
    ``pull(key, rate, on_piece)`` streams them back at ``rate`` bytes/s (None: unshaped).
    """

    def __init__(self, store: str | os.PathLike | None = None, *, start_timeout: float = 60.0) -> None:
        self._tmp = None if store is not None else tempfile.TemporaryDirectory(prefix="kvstack-link-")
        self.store = str(store if store is not None else Path(self._tmp.name) / "store")
        self.token = secrets.token_hex(16)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kvstack.transport", "serve", "--store", self.store, "--port", "0",
             "--token", self.token],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        line = self._first_line(start_timeout)
        if "listening on" not in line:
            err = self.proc.stderr.read() if self.proc.poll() is not None else ""
            self.close()
            raise TransportError(f"kvstack serve did not start: {line.strip()!r} {err.strip()[-500:]}")
        self.url = line.split("listening on ")[1].split()[0]

    def _first_line(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        import selectors

        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if sel.select(timeout=0.2):
                    return self.proc.stdout.readline()
                if self.proc.poll() is not None:
                    return ""
        return ""

    def __enter__(self) -> LoopbackLink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def push(self, blob: bytes) -> str:
        """Store wire bytes on the server (unshaped: the sender did this ahead of time); their key."""
        from kvstack.transport.client import Client

        async def go() -> str:
            async with Client(self.url, self.token) as c:
                return (await c.push(blob))["key"]

        return asyncio.run(go())

    def pull(self, key: str, rate: float | None, on_piece: Callable[[bytes], object] = lambda _: None) -> Transfer:
        """Stream ``key`` at ``rate`` bytes/s, handing each piece to ``on_piece`` (e.g. a stream
        decoder's ``feed``) as it is released; timed from the request to the last piece handled."""
        if rate is not None and not rate > 0:
            raise InputError(f"link rate {rate!r} bytes/s must be positive")
        from kvstack.transport.client import Client

        async def go() -> Transfer:
            async with Client(self.url, self.token) as c:
                total = 0
                start = time.perf_counter()
                async for piece in c.stream(key, rate):
                    total += len(piece)
                    on_piece(piece)
                return Transfer(total, time.perf_counter() - start)

        return asyncio.run(go())


def gbits(rate_gbit_s: float) -> float:
    """Gigabits per second -> bytes per second."""
    return rate_gbit_s * 1e9 / 8
