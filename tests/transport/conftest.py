"""Fixtures of the transport tests (the private redis-server, ``redis_url``, is in tests/conftest.py): real
servers (aiohttp on a free port, in a background thread) over a directory or Redis store."""

from __future__ import annotations

import pytest
import torch
from transport_helpers import TOKEN, RunningServer


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(params=["dir", "redis"])
def store_url(request, tmp_path):
    """A fresh store: a temp directory, or a fresh Redis database (flushed)."""
    if request.param == "dir":
        return str(tmp_path / "store")
    url = request.getfixturevalue("redis_url")
    import redis

    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture
def serve():
    """``serve(store_url, token=TOKEN, max_bytes=..., settings=ServerSettings(...))`` -> RunningServer,
    stopped after the test."""
    running = []

    def start(store_url: str, token: str | None = TOKEN, max_bytes: int = 1 << 30, settings=None) -> RunningServer:
        s = RunningServer(store_url, token, max_bytes, settings)
        running.append(s)
        return s

    yield start
    for s in running:
        s.stop()
