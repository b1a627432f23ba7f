"""Where the server and clients take their token from (issue 19): ``--token-file`` and
``$KVSTACK_TOKEN`` keep it out of the process list; ``--no-auth`` starts with a loud warning."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transport_helpers import TOKEN, tiny_llama

import kvstack
from kvstack import wire
from kvstack.transport.__main__ import main

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
ENV.pop("KVSTACK_TOKEN", None)


def _serve(*args: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "kvstack.transport", "serve", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or ENV)
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        pytest.fail(f"server did not start: {line!r} {proc.stderr.read()}")
    return proc, line


def _stop(proc: subprocess.Popen) -> str:
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    return err


def test_token_file_on_both_sides_and_the_env_variable(tmp_path, monkeypatch):
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    proc, line = _serve("--store", str(tmp_path / "store"), "--token-file", str(secret))
    url = line.split("listening on ")[1].split()[0]
    try:
        assert TOKEN not in " ".join(proc.args)
        src = tmp_path / "a.kvw"
        wire.save(kvstack.compress(tiny_llama(), torch.arange(3, 30), "int8"), src)
        assert main(["push", str(src), "--server", url, "--token-file", str(secret)]) == 0
        monkeypatch.setenv("KVSTACK_TOKEN", TOKEN)
        assert main(["caches", "--server", url]) == 0
        monkeypatch.setenv("KVSTACK_TOKEN", "wrong-token-123")
        assert main(["caches", "--server", url]) == 2
    finally:
        _stop(proc)


def test_server_takes_the_env_variable(tmp_path):
    proc, _ = _serve("--store", str(tmp_path / "store"), env={**ENV, "KVSTACK_TOKEN": TOKEN})
    assert "WARNING" not in _stop(proc)


def test_bad_token_files_are_input_errors(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert main(["serve", "--store", str(tmp_path), "--port", "0", "--token-file", str(empty)]) == 2
    assert "is empty" in capsys.readouterr().err
    assert main(["serve", "--store", str(tmp_path), "--port", "0", "--token-file", str(tmp_path / "none")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_no_auth_warns_loudly(tmp_path):
    proc, line = _serve("--store", str(tmp_path / "store"), "--no-auth")
    err = _stop(proc)
    assert "[NO AUTH]" in line
    assert "WITHOUT AUTHENTICATION" in err and "anyone who can reach" in err
