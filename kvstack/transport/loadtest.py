"""Concurrent clients pushing and pulling many caches: the check that nothing is lost or
corrupted under load, with latency percentiles. Used by ``benchmarks/wire_load.py`` (full
size) and by the tests (a short run)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field

import torch

from kvstack.kv import KVCache, KVLayer
from kvstack.transport.client import Client
from kvstack.wire.reader import decode
from kvstack.wire.writer import encode


def synthetic_caches(count: int, tokens: int = 256, layers: int = 4, heads: int = 2, dim: int = 64,
                     recipe: str = "int4", seed: int = 0) -> list[KVCache]:
    """``count`` distinct caches (random context ids, Gaussian K/V) compressed by ``recipe``."""
    from kvstack.stack import Recipe, StageContext

    g = torch.Generator().manual_seed(seed)
    ctx = StageContext(heads * 2, heads, dim, layers)
    out = []
    for i in range(count):
        ids = torch.randint(0, 50_000, (tokens,), generator=g, dtype=torch.int32)
        dense = [KVLayer.from_dense(torch.randn(heads, tokens, dim, generator=g).half(),
                                    torch.randn(heads, tokens, dim, generator=g).half()) for _ in range(layers)]
        cache = KVCache(dense, ids, torch.float16, model_fingerprint=f"{0xFEED0000 + i % 3:08x}",
                        dense_layout=[(heads, dim, None)] * layers)
        out.append(Recipe.parse(recipe).apply(cache, ctx))
    return out


@dataclass
class LoadReport:
    pushes: list[float] = field(default_factory=list)
    pulls: list[float] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    corrupted: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    bytes_moved: int = 0

    @staticmethod
    def percentile(values: list[float], q: float) -> float:
        if not values:
            return float("nan")
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]

    def row(self, name: str) -> str:
        p = self.percentile
        return (f"| {name} | {len(self.pushes)} | {len(self.pulls)} | {len(self.lost)} | {len(self.corrupted)} | "
                f"{len(self.errors)} | {1000 * p(self.pushes, 50):.1f} / {1000 * p(self.pushes, 95):.1f} / "
                f"{1000 * p(self.pushes, 99):.1f} | {1000 * p(self.pulls, 50):.1f} / {1000 * p(self.pulls, 95):.1f} / "
                f"{1000 * p(self.pulls, 99):.1f} | {self.bytes_moved / max(self.seconds, 1e-9) / 1e6:.1f} |")


HEADER = ("| store | pushes | pulls | lost | corrupted | errors | push ms p50/p95/p99 | pull ms p50/p95/p99 | MB/s |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- |")


async def run_load(url: str, token: str | None, caches: list[KVCache], clients: int, **wire_options) -> LoadReport:
    """``clients`` concurrent clients; client ``k`` pushes caches ``k, k+clients, ...`` then pulls
    each back and checks its SHA-256; at the end every cache is pulled once more and decoded,
    and the listing must hold every key."""
    blobs = [encode(c, **wire_options) for c in caches]
    digests = [hashlib.sha256(b).hexdigest() for b in blobs]
    keys: list[str | None] = [None] * len(blobs)
    report = LoadReport()
    start = time.perf_counter()

    async def worker(k: int) -> None:
        async with Client(url, token) as c:
            for i in range(k, len(blobs), clients):
                try:
                    t = time.perf_counter()
                    keys[i] = (await c.push(blobs[i]))["key"]
                    report.pushes.append(time.perf_counter() - t)
                    t = time.perf_counter()
                    got = await c.pull_bytes(keys[i])
                    report.pulls.append(time.perf_counter() - t)
                    report.bytes_moved += len(blobs[i]) + len(got)
                    if hashlib.sha256(got).hexdigest() != digests[i]:
                        report.corrupted.append(keys[i])
                except Exception as exc:  # noqa: BLE001 - every failure is counted, none may stop the run
                    report.errors.append(f"cache {i}: {type(exc).__name__}: {exc}")

    await asyncio.gather(*(worker(k) for k in range(clients)))
    report.seconds = time.perf_counter() - start
    async with Client(url, token) as c:
        listed = {e["key"] for e in await c.list()}
        for i, key in enumerate(keys):
            if key is None or key not in listed:
                report.lost.append(f"cache {i}")
                continue
            got = await c.pull_bytes(key)
            if hashlib.sha256(got).hexdigest() != digests[i]:
                report.corrupted.append(key)
            else:
                decode(got)  # every byte checks out and decodes
    return report
