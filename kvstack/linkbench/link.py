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
    """``kvstack serve`` (directory store in a temporary directory, under ``store`` if given) plus a
    shaped client; uploads up to ``max_bytes`` (a 32K-token fp16 cache of an 8B model is 4 GiB).

    Use as a context manager; ``push(blob)`` stores wire bytes and returns their key,
    ``pull(key, rate, on_piece)`` streams them back at ``rate`` bytes/s (None: unshaped).
    """

    def __init__(self, store: str | os.PathLike | None = None, *, start_timeout: float = 60.0,
                 max_bytes: int = 1 << 40) -> None:
        # store None: a temporary directory; a directory given: a temporary one inside it (e.g. on tmpfs)
        self._tmp = tempfile.TemporaryDirectory(prefix="kvstack-link-", dir=store)
        self.store = str(Path(self._tmp.name) / "store")
        self.token = secrets.token_hex(16)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kvstack.transport", "serve", "--store", self.store, "--port", "0",
             "--token", self.token, "--max-bytes", str(max_bytes)],
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

    def put(self, blob: bytes) -> str:
        """Write wire bytes straight into the server's directory store, as an upload's commit would
        (atomic rename), without the HTTP upload and its check - 75-130 MB/s on this machine, a
        minute for a 4 GiB cache, and not part of any TTFT (the sender does it ahead of time).
        The receiver's decoder still checks every chunk's CRC on the way back. Returns the key."""
        from kvstack.transport.keys import CacheKey
        from kvstack.transport.store import Entry
        from kvstack.transport.store_dir import DirectoryStore
        from kvstack.wire import StreamDecoder
        from kvstack.wire.format import PREAMBLE

        if len(blob) < PREAMBLE.size:
            raise InputError("not a wire stream: shorter than its preamble")
        dec = StreamDecoder(verify_only=True)
        dec.feed(blob[: PREAMBLE.size + PREAMBLE.unpack_from(blob)[3] + 4])  # preamble, header and its CRC
        h = dec.header
        if h is None:
            raise InputError("not a wire stream: its header is cut short")
        key = CacheKey(h.model_fingerprint, h.context_sha256)

        async def go() -> None:
            upload = await DirectoryStore(self.store).begin_put()
            try:
                await upload.write(blob)
                await upload.commit(Entry(key, len(blob), h.context_tokens, h.recipe, time.time()))
            except BaseException:
                await upload.abort()
                raise

        asyncio.run(go())
        return str(key)

    def pull(self, key: str, rate: float | None, on_piece: Callable[[bytes], object] = lambda _: None) -> Transfer:
        """Stream ``key`` at ``rate`` bytes/s (burst: :func:`burst_bytes`), handing each piece to
        ``on_piece`` (e.g. a stream decoder's ``feed``) as it is released; timed from the request to
        the last piece handled."""
        if rate is not None and not rate > 0:
            raise InputError(f"link rate {rate!r} bytes/s must be positive")
        from kvstack.transport.client import Client

        async def go() -> Transfer:
            async with Client(self.url, self.token) as c:
                total = 0
                start = time.perf_counter()
                async for piece in c.stream(key, rate, burst_bytes(rate) if rate is not None else MIN_BURST):
                    total += len(piece)
                    on_piece(piece)
                return Transfer(total, time.perf_counter() - start)

        return asyncio.run(go())


MIN_BURST = 64 << 10
BURST_SECONDS = 0.01


def burst_bytes(rate: float) -> int:
    """The token bucket's burst at ``rate`` bytes/s: 10 ms of data, at least 64 KiB. Releasing a
    fast link in 64 KiB slices costs the Python receiver ~0.3 ms of overhead per slice on this
    machine - it measured 10 Gbit/s cells at a third of their speed - while 10 ms quanta keep the
    overhead a few percent and the rate exact over any transfer longer than that."""
    return max(MIN_BURST, int(rate * BURST_SECONDS))


def gbits(rate_gbit_s: float) -> float:
    """Gigabits per second -> bytes per second."""
    return rate_gbit_s * 1e9 / 8


class LinkPool:
    """One :class:`LoopbackLink` per path. The server's store is content-addressed - one cache per
    model and context - so the text, the fp16 cache and each recipe of the same context need
    servers of their own to be stored side by side (and pulled in any order)."""

    def __init__(self, store: str | os.PathLike | None = None) -> None:
        self.store = store
        self.links: dict[str, LoopbackLink] = {}

    def start(self, labels: list[str]) -> None:
        """Start the servers of ``labels`` not running yet, all at once."""
        from concurrent.futures import ThreadPoolExecutor

        new = [label for label in dict.fromkeys(labels) if label not in self.links]
        with ThreadPoolExecutor(max_workers=max(1, len(new))) as pool:
            futures = {label: pool.submit(LoopbackLink, self.store) for label in new}
        for label, future in futures.items():
            try:
                self.links[label] = future.result()
            except Exception:
                self.close()
                raise

    def __getitem__(self, label: str) -> LoopbackLink:
        if label not in self.links:
            self.start([label])
        return self.links[label]

    def __enter__(self) -> LinkPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for link in self.links.values():
            link.close()
        self.links.clear()

