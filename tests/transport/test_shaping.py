"""The token bucket's arithmetic, on a simulated clock (no real waiting, nothing timed)."""

from __future__ import annotations

import asyncio

import pytest

from kvstack.errors import InputError
from kvstack.transport.shaping import TokenBucket, shaped


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_bucket_releases_bytes_at_the_rate_after_the_burst():
    clock = FakeClock()
    bucket = TokenBucket(1000.0, burst=500, clock=clock, sleep=clock.sleep)

    async def pieces():
        for _ in range(10):
            yield b"x" * 300

    async def drain():
        return [p async for p in shaped(pieces(), bucket)]

    out = asyncio.run(drain())
    assert sum(map(len, out)) == 3000
    # 3000 bytes, 500 free: the last byte leaves exactly 2.5 s after the start
    assert clock.now == pytest.approx((3000 - 500) / 1000.0)
    assert all(s > 0 for s in clock.slept)


def test_idle_time_refills_only_up_to_the_burst():
    clock = FakeClock()
    bucket = TokenBucket(100.0, burst=50, clock=clock, sleep=clock.sleep)
    clock.now = 100.0  # a long pause: the bucket holds at most `burst`
    asyncio.run(bucket.take(150))
    assert clock.now == pytest.approx(101.0)


def test_bad_rates_are_input_errors():
    with pytest.raises(InputError, match="positive"):
        TokenBucket(0)
    with pytest.raises(InputError, match="burst"):
        TokenBucket(10.0, burst=0)
