"""Soak test of the cache server under faults (issue 19): concurrent clients push and pull, slow
clients stall and trickle, hostile clients upload garbage, and the server and Redis are killed
with SIGKILL at random and restarted, for a bounded time; at the end every cache the server
acknowledged (201) must come back byte for byte.

    python benchmarks/wire_soak.py                          # 60 s per store, 64 clients, dir + redis
    python benchmarks/wire_soak.py --seconds 300 --stores redis --kill-every 20

Loopback only (127.0.0.1), bounded in time (``--seconds`` per store, plus at most
``--verify-seconds`` for the final check) and in count (``--max-requests``). Redis runs
privately with ``appendonly yes, appendfsync always``, so a committed cache survives kill -9
as a directory store's fsynced file does. Reports requests served, p50/p99 latency of pushes
and pulls, peak server RSS (sampled from /proc every 0.2 s, across restarts), kills, the slow
clients' answers, and lost / corrupt caches. Exit status 1 if any cache is lost or corrupt.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field

from kvstack.errors import CacheFormatError, CacheNotFoundError, KvstackError, TransportError
from kvstack.transport.client import Client
from kvstack.transport.loadtest import LoadReport, synthetic_caches
from kvstack.wire.writer import encode

TOKEN = "soak-test-token-0123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


class Proc:
    """A restartable child process on a fixed port (the server or redis-server)."""

    def __init__(self, argv: list[str], port: int, env: dict | None = None) -> None:
        self.argv, self.port, self.env = argv, port, env
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env)
        self.starts += 1
        if not wait_port(self.port):
            raise SystemExit(f"{self.argv[0]} did not listen on port {self.port}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def rss_mb(self) -> float:
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except (OSError, AttributeError):
            pass
        return 0.0


@dataclass
class Soak:
    load: LoadReport = field(default_factory=LoadReport)
    acked: dict[str, str] = field(default_factory=dict)  # key -> sha256 of the blob acknowledged under it
    failures: Counter = field(default_factory=Counter)
    slow: Counter = field(default_factory=Counter)
    hostile: Counter = field(default_factory=Counter)
    kills: Counter = field(default_factory=Counter)
    peak_rss_mb: float = 0.0
    idle_rss_mb: float = 0.0
    requests: int = 0
    lost: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    unverified: int = 0


async def client(url: str, blobs: list[bytes], digests: list[str], soak: Soak, deadline: float, rng: random.Random,
                 max_requests: int) -> None:
    async with Client(url, TOKEN, timeout=30) as c:
        keys: dict[int, str] = {}
        while time.monotonic() < deadline and soak.requests < max_requests:
            i = rng.randrange(len(blobs))
            soak.requests += 1
            t = time.perf_counter()
            try:
                if i not in keys or rng.random() < 0.3:
                    key = (await c.push(blobs[i]))["key"]
                    soak.load.pushes.append(time.perf_counter() - t)
                    keys[i] = key
                    soak.acked[key] = digests[i]
                else:
                    got = await c.pull_bytes(keys[i])
                    soak.load.pulls.append(time.perf_counter() - t)
                    if hashlib.sha256(got).hexdigest() != digests[i]:
                        soak.corrupt.append(f"pull of {keys[i]} during the run")
            except (TimeoutError, KvstackError, OSError) as exc:
                text = str(exc)
                kind = ("503 cap" if "--max-uploads" in text else "503 store down" if " 503" in text
                        else "unreachable" if "cannot reach" in text else "cut short" if "cut short" in text
                        else f"{type(exc).__name__}: {text.split(': ', 1)[-1][:70]}")
                soak.failures[kind] += 1
                await asyncio.sleep(0.2)


async def slow_client(port: int, blob: bytes, soak: Soak, deadline: float, rng: random.Random) -> None:
    """Open an upload and stall (or trickle a byte at a time, or withhold the headers)."""
    head = (f"PUT /v1/caches HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Length: {len(blob)}\r\n\r\n").encode()
    while time.monotonic() < deadline:
        mode = rng.choice(("stall", "trickle", "headers"))
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            soak.slow["unreachable"] += 1
            await asyncio.sleep(0.5)
            continue
        try:
            writer.write(head[:20] if mode == "headers" else head + blob[:500])
            await writer.drain()
            if mode == "trickle":
                for b in range(500, len(blob)):
                    if reader.at_eof() or time.monotonic() > deadline:
                        break
                    writer.write(blob[b : b + 1])
                    await writer.drain()
                    await asyncio.sleep(0.5)
            line = await asyncio.wait_for(reader.readline(), 120)
            soak.slow[f"{mode}: {line.decode(errors='replace').split(' ', 2)[1] if line else 'closed'}"] += 1
        except (TimeoutError, OSError, IndexError) as exc:
            soak.slow[f"{mode}: {type(exc).__name__}"] += 1
        finally:
            writer.close()


async def hostile_client(url: str, blobs: list[bytes], soak: Soak, deadline: float, rng: random.Random) -> None:
    """Truncated streams, flipped bytes, random junk: each must be refused (4xx)."""
    import aiohttp

    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as s:
        while time.monotonic() < deadline:
            blob = bytearray(rng.choice(blobs))
            kind = rng.choice(("truncated", "flipped", "junk"))
            if kind == "truncated":
                blob = blob[: rng.randrange(1, len(blob))]
            elif kind == "flipped":
                blob[rng.randrange(len(blob))] ^= 1 << rng.randrange(8)
            else:
                blob = bytearray(rng.randbytes(rng.randrange(1, 4096)))
            try:
                async with s.put(f"{url}/v1/caches", data=bytes(blob)) as resp:
                    soak.hostile[f"{kind}: {resp.status}"] += 1
            except (TimeoutError, aiohttp.ClientError):
                soak.hostile[f"{kind}: unreachable"] += 1
            await asyncio.sleep(0.2)


async def killer(procs: dict[str, Proc], soak: Soak, deadline: float, every: float, rng: random.Random) -> None:
    """SIGKILL at random times, the targets taking turns from a random first one."""
    names = sorted(procs)
    turn = rng.randrange(len(names))
    while True:
        await asyncio.sleep(rng.uniform(0.5 * every, 1.5 * every))
        if time.monotonic() > deadline - 2:
            return
        name = names[turn % len(names)]
        turn += 1
        procs[name].kill()
        soak.kills[name] += 1
        await asyncio.sleep(0.3)
        await asyncio.to_thread(procs[name].start)


async def sampler(server: Proc, soak: Soak, stop: asyncio.Event) -> None:
    while not stop.is_set():
        soak.peak_rss_mb = max(soak.peak_rss_mb, server.rss_mb())
        await asyncio.sleep(0.2)


async def verify(url: str, soak: Soak, seconds: float) -> None:
    """Every acknowledged key must pull back as the blob acknowledged under it."""
    deadline = time.monotonic() + seconds
    async with Client(url, TOKEN, timeout=60) as c:
        for key, digest in soak.acked.items():
            while True:
                try:
                    got = await c.pull_bytes(key)
                    if hashlib.sha256(got).hexdigest() != digest:
                        soak.corrupt.append(key)
                    break
                except CacheNotFoundError:
                    soak.lost.append(key)
                    break
                except (TransportError, CacheFormatError):  # store still coming back, or a cut download
                    if time.monotonic() > deadline:
                        soak.unverified += 1
                        break
                    await asyncio.sleep(0.5)


async def soak_store(kind: str, tmp: str, args, blobs: list[bytes]) -> Soak:
    rng = random.Random(args.seed)
    procs: dict[str, Proc] = {}
    if kind == "redis":
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed: apt-get install -y redis-server")
        rport = free_port()
        rdir = os.path.join(tmp, "redis")
        os.makedirs(rdir)
        procs["redis"] = Proc([binary, "--port", str(rport), "--bind", "127.0.0.1", "--dir", rdir, "--save", "",
                               "--appendonly", "yes", "--appendfsync", "always"], rport)
        procs["redis"].start()
        store = f"redis://127.0.0.1:{rport}/0"
    else:
        store = os.path.join(tmp, "store")
    port = free_port()
    server = Proc([sys.executable, "-m", "kvstack.transport", "serve", "--store", store, "--port", str(port),
                   "--header-timeout", str(args.timeout), "--body-idle-timeout", str(args.timeout),
                   "--body-timeout", str(4 * args.timeout)], port,
                  env={**os.environ, "OMP_NUM_THREADS": "1", "KVSTACK_TOKEN": TOKEN})
    server.start()
    soak = Soak()
    soak.idle_rss_mb = server.rss_mb()
    if args.kill_every > 0:
        procs["server"] = server
    url = f"http://127.0.0.1:{port}"
    digests = [hashlib.sha256(b).hexdigest() for b in blobs]
    deadline = time.monotonic() + args.seconds
    stop = asyncio.Event()
    sample = asyncio.create_task(sampler(server, soak, stop))
    tasks = [client(url, blobs, digests, soak, deadline, random.Random(rng.random()), args.max_requests)
             for _ in range(args.clients)]
    tasks += [slow_client(port, blobs[0], soak, deadline, random.Random(rng.random())) for _ in range(args.slow)]
    tasks += [hostile_client(url, blobs, soak, deadline, random.Random(rng.random())) for _ in range(args.hostile)]
    kill = (asyncio.create_task(killer({k: v for k, v in procs.items()}, soak, deadline, args.kill_every, rng))
            if args.kill_every > 0 else None)
    start = time.perf_counter()
    try:
        await asyncio.gather(*tasks)
        soak.load.seconds = time.perf_counter() - start
        if kill is not None:
            kill.cancel()
        for p in procs.values():  # anything killed in the last moments is back before the check
            if p.proc.poll() is not None:
                await asyncio.to_thread(p.start)
        await verify(url, soak, args.verify_seconds)
    finally:
        stop.set()
        await sample
        server.stop()
        for p in procs.values():
            p.stop()
    return soak


HEADER = ("| store | s | requests ok | push ms p50 / p99 | pull ms p50 / p99 | server RSS MB idle / peak | kills "
          "(server / redis) | failed requests | slow clients | hostile uploads | acked caches | lost | corrupt |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def row(kind: str, s: Soak) -> str:
    p = LoadReport.percentile
    ms = lambda xs, q: f"{1000 * p(xs, q):.0f}"  # noqa: E731
    fmt = lambda c: ", ".join(f"{k} x{v}" for k, v in sorted(c.items())) or "-"  # noqa: E731
    served = len(s.load.pushes) + len(s.load.pulls)
    return (f"| {kind} | {s.load.seconds:.0f} | {served} | {ms(s.load.pushes, 50)} / {ms(s.load.pushes, 99)} | "
            f"{ms(s.load.pulls, 50)} / {ms(s.load.pulls, 99)} | {s.idle_rss_mb:.0f} / {s.peak_rss_mb:.0f} | "
            f"{s.kills['server']} / "
            f"{s.kills['redis']} | {fmt(s.failures)} | {fmt(s.slow)} | {fmt(s.hostile)} | {len(s.acked)} | "
            f"{len(s.lost)} | {len(s.corrupt)}{f' ({s.unverified} unverified)' if s.unverified else ''} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0, help="soak time per store (default 60)")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--slow", type=int, default=8, help="slow clients (stall, trickle, withhold headers)")
    ap.add_argument("--hostile", type=int, default=2, help="clients uploading corrupt streams")
    ap.add_argument("--caches", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--kill-every", type=float, default=15.0, help="mean seconds between SIGKILLs (0: none)")
    ap.add_argument("--timeout", type=float, default=3.0, help="server header / body-idle timeout, seconds")
    ap.add_argument("--max-requests", type=int, default=200_000, help="stop clients after this many requests")
    ap.add_argument("--verify-seconds", type=float, default=60.0)
    ap.add_argument("--stores", default="dir,redis")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    blobs = [encode(c) for c in synthetic_caches(args.caches, tokens=args.tokens, layers=args.layers)]
    size = sum(map(len, blobs)) // len(blobs)
    print(f"{args.caches} caches of {args.tokens} tokens x {args.layers} layers (int4, {size} B each), "
          f"{args.clients} clients + {args.slow} slow + {args.hostile} hostile, {args.seconds:g} s per "
          f"store, kill -9 every ~{args.kill_every:g} s, server timeouts {args.timeout:g} s\n")
    print(HEADER)
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.stores.split(","):
            soak = asyncio.run(soak_store(kind, os.path.join(tmp, kind), args, blobs))
            print(row(kind, soak), flush=True)
            bad += len(soak.lost) + len(soak.corrupt)
            for key in (soak.lost + soak.corrupt)[:5]:
                print("  lost or corrupt:", key)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
