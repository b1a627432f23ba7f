"""Bad settings fail when LMCache builds its storage manager - at start-up, before any chunk is
stored - with kvstack's typed errors: a chunk layout kvstack cannot encode (dtype, shape), a
recipe that drops tokens, a missing head_dim, a plugin adapter without a store or with an
unreachable Redis. The launcher's ``lmcache server`` starts with the serializer and exits with
the same message on a bad layout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

pytest.importorskip("lmcache", reason="LMCache is not installed here; `make test-lmcache` runs these in .venv-lmcache")

from lmcache_helpers import PLUGIN, storage_manager  # noqa: E402

from kvstack.errors import ConfigError, RecipeError, TransportError  # noqa: E402


def _fs(tmp_path, **serde) -> dict:
    return {"type": "fs", "base_path": str(tmp_path), "serde": {"type": "kvstack", **serde}}


@pytest.mark.parametrize("serde,error,match", [
    ({"head_dim": 64, "layout": {"shape": [2, 30, 256, 192], "dtype": "float8_e4m3fn"}}, ConfigError, "dtype"),
    ({"head_dim": 64, "layout": {"shape": [30, 256, 576], "dtype": "bfloat16"}}, ConfigError, "single-plane"),
    ({"head_dim": 64, "layout": {"shape": [2, 30, 256, 200], "dtype": "bfloat16"}}, ConfigError, "head_dim"),
    ({"head_dim": 96, "recipe": "int4:rot"}, RecipeError, "power-of-two"),
    ({"head_dim": 64, "recipe": "snapkv:0.25 > int4"}, RecipeError, "every token"),
    ({"recipe": "int4"}, ConfigError, "head_dim"),
    ({"head_dim": 64, "bits": 4}, ConfigError, "unknown setting"),
])
def test_bad_serde_settings_fail_when_the_storage_manager_is_built(tmp_path, serde, error, match):
    with pytest.raises(error, match=match):
        storage_manager(_fs(tmp_path, **serde))
    assert not any(tmp_path.iterdir())  # nothing was stored


def test_bad_plugin_settings_fail_when_the_storage_manager_is_built(tmp_path):
    with pytest.raises(ConfigError, match="store"):
        storage_manager({**PLUGIN, "adapter_params": {}})
    with pytest.raises(ConfigError, match="unknown"):
        storage_manager({**PLUGIN, "adapter_params": {"store": str(tmp_path), "coder": "ans"}})
    with pytest.raises(TransportError, match="redis-server"):
        storage_manager({**PLUGIN, "adapter_params": {"store": "redis://127.0.0.1:1/0"}})


def _launch(tmp_path, serde: dict, port: int, http_port: int) -> subprocess.Popen:
    adapter = json.dumps({"type": "fs", "base_path": str(tmp_path / "l2"), "serde": {"type": "kvstack", **serde}})
    cmd = [sys.executable, "-m", "kvstack.integrations.lmcache.server", "--port", str(port),
           "--http-port", str(http_port), "--l1-size-gb", "0.1", "--eviction-policy", "LRU", "--l2-adapter", adapter]
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_lmcache_server_runs_the_kvstack_serializer(tmp_path):
    http_port = _port()
    proc = _launch(tmp_path, {"head_dim": 64, "recipe": "int4"}, _port(), http_port)
    try:
        deadline, status = time.time() + 120, None
        while time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/status", timeout=2) as r:
                    status = json.load(r)
                break
            except OSError:
                time.sleep(0.5)
        assert status is not None, (tmp_path / "server.log").read_text()[-3000:]
        assert status["is_healthy"]
        (adapter,) = status["storage_manager"]["l2_adapters"]
        assert adapter["serde_wrapped"] and adapter["type"] == "FSL2Adapter"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_lmcache_server_refuses_a_layout_kvstack_cannot_encode(tmp_path):
    bad = {"head_dim": 64, "layout": {"shape": [2, 30, 256, 192], "dtype": "int8"}}
    proc = _launch(tmp_path, bad, _port(), _port())
    try:
        assert proc.wait(timeout=120) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "server.log").read_text()
    assert "kvstack cannot encode LMCache chunks of dtype 'int8'" in log, log[-3000:]
