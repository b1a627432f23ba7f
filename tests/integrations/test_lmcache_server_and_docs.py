"""docs/lmcache.md as written: its server command (``lmcache server`` through kvstack's launcher,
with the example adapter configuration) starts with the kvstack serializer on the adapter, and
exits with kvstack's message when the layout is one kvstack cannot encode; every example
configuration builds LMCache's storage manager; the JSON shown in the docs is the example file."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("lmcache.v1.distributed", reason="LMCache is not installed: `make test-lmcache` runs these")

from lmcache_helpers import storage_manager  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "lmcache.md").read_text(encoding="utf-8")
EXAMPLES = sorted((ROOT / "examples" / "lmcache").glob("*.json"))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(path: Path, tmp_path: Path, redis_port: int | None = None) -> dict:
    """An example configuration with its directories moved under ``tmp_path`` (and Redis's port)."""
    cfg = json.loads(path.read_text())
    if "base_path" in cfg:
        cfg["base_path"] = str(tmp_path / "fs")
    if cfg.get("adapter_params", {}).get("store", "").startswith("/"):
        cfg["adapter_params"]["store"] = str(tmp_path / "store")
    if redis_port is not None and cfg["type"] == "resp":
        cfg["port"] = redis_port
    return cfg


def _doc_server_argv(tmp_path: Path, serde_change: dict | None = None) -> tuple[list[str], int, dict]:
    """The docs' server command with free ports and the example file's JSON (directories in tmp)."""
    (line,) = [ln for ln in DOC.splitlines() if "kvstack.integrations.lmcache.server" in ln and ln.startswith(".venv")]
    file = re.search(r'"\$\(cat ([^)]+)\)"', line).group(1)
    cfg = _config(ROOT / file, tmp_path)
    cfg["serde"].update(serde_change or {})
    http_port = _port()
    line = line.replace(f'"$(cat {file})"', shlex.quote(json.dumps(cfg)))
    line = line.replace("--port 5555", f"--port {_port()}").replace("--http-port 8080", f"--http-port {http_port}")
    argv = shlex.split(line.removesuffix("&").strip())
    assert argv[0] == ".venv-lmcache/bin/python"
    return [str(ROOT / argv[0]) if (ROOT / argv[0]).exists() else "python", *argv[1:]], http_port, cfg


def _launch(argv: list[str], tmp_path: Path) -> subprocess.Popen:
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_the_docs_server_command_runs_lmcache_with_the_kvstack_serializer(tmp_path):
    argv, http_port, cfg = _doc_server_argv(tmp_path)
    proc = _launch(argv, tmp_path)
    try:
        deadline, status = time.time() + 180, None
        while time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/status", timeout=2) as r:
                    status = json.load(r)
                break
            except OSError:
                time.sleep(0.5)
        assert status is not None, (tmp_path / "server.log").read_text()[-3000:]
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert status["is_healthy"]
    (adapter,) = status["storage_manager"]["l2_adapters"]
    assert adapter["serde_wrapped"] and adapter["store"] == cfg["adapter_params"]["store"]


def test_the_server_refuses_a_layout_kvstack_cannot_encode(tmp_path):
    argv, _, _ = _doc_server_argv(tmp_path, {"layout": {"shape": [2, 30, 256, 192], "dtype": "int8"}})
    proc = _launch(argv, tmp_path)
    try:
        assert proc.wait(timeout=180) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "server.log").read_text()
    assert "kvstack cannot encode LMCache chunks of dtype 'int8'" in log, log[-3000:]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_configuration_builds_the_storage_manager(path, tmp_path, request):
    port = None
    if json.loads(path.read_text())["type"] == "resp":
        port = int(request.getfixturevalue("redis_url").rsplit(":", 1)[1].split("/")[0])
    sm = storage_manager(_config(path, tmp_path, port))
    try:
        (usage,) = sm.get_l2_usages()
        assert usage[0] == 0
    finally:
        sm.close()


def test_the_json_in_the_docs_is_the_example_file():
    shown = re.search(r"```json\n(.*?)```", DOC, re.S).group(1)
    assert json.loads(shown) == json.loads((ROOT / "examples" / "lmcache" / "kvstack-plugin.json").read_text())
