"""Fixtures of the transport tests: a real redis-server on a free loopback port, and real
servers (aiohttp on a free port, in a background thread) over a directory or Redis store."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest
import torch
from transport_helpers import TOKEN, RunningServer, free_port


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A private redis-server (Debian's package), killed at the end of the session."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server); the Redis store is untested")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--save", "",
         "--appendonly", "no", "--protected-mode", "yes"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("redis-server did not start within 10 s")
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


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
