"""A token bucket: receive at most ``rate`` bytes per second (after an initial ``burst``), so a
loopback transfer behaves like a link of a chosen bandwidth. Used to measure time to first
token over slow links (``benchmarks/wire_ttft.py``); the clock and sleep are injectable so the
arithmetic is testable without waiting."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from kvstack.errors import InputError


class TokenBucket:
    """``await bucket.take(n)`` returns once ``n`` bytes fit the rate; tokens refill continuously."""

    def __init__(self, rate: float, burst: int = 64 << 10, *, clock: Callable[[], float] = time.perf_counter,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        if not rate > 0:
            raise InputError(f"bandwidth {rate!r} bytes/s must be positive")
        if burst < 1:
            raise InputError(f"burst {burst!r} must be at least 1 byte")
        self.rate, self.burst = float(rate), int(burst)
        self.clock, self.sleep = clock, sleep
        self.tokens = float(burst)
        self.stamp = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    async def take(self, n: int) -> None:
        """Spend ``n`` bytes, waiting as long as the rate requires (``n`` may exceed the burst)."""
        self._refill()
        self.tokens -= n
        if self.tokens < 0:
            await self.sleep(-self.tokens / self.rate)
            self._refill()


async def shaped(pieces: AsyncIterator[bytes], bucket: TokenBucket) -> AsyncIterator[bytes]:
    """Pass ``pieces`` through in slices of at most ``bucket.burst`` bytes, each released only when
    the bucket allows its size: a 1 MiB socket read then reaches the consumer as it would trickle
    in over a slow link, so decoding can overlap the transfer at a fine grain."""
    async for piece in pieces:
        view = memoryview(piece)
        for start in range(0, len(view), bucket.burst):
            part = view[start : start + bucket.burst]
            await bucket.take(len(part))
            yield bytes(part)
