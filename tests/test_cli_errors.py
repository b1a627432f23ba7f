"""Every ``kvstack`` command given broken arguments exits with a one-line error, never a traceback.

Run in-process through ``kvstack.cli.main`` (cheap): an exception escaping ``main`` is exactly
what a user would see as a traceback, so the test fails on any.
"""

from __future__ import annotations

import pytest

from kvstack.cli import build_parser, main

# (command line, phrase the error must contain); every command appears at least once.
BROKEN = [
    (["run", "--recipe", "nosuch"], "unknown stage"),
    (["run", "--max-new-tokens", "0"], "at least 1 token"),
    (["run", "--model", "/nonexistent"], "neither a bundled name"),
    (["recipes", "--bogus"], "unrecognized arguments"),
    (["plan", "nosuch-model", "--context", "128K"], "neither a preset"),
    (["plan", "llama-3.1-8b", "--context", "abc"], "cannot read context"),
    (["eval", "--model", "kvstack-retrieval", "--recipes", "nosuch", "--tasks", "niah_single"], "unknown stage"),
    (["eval", "--model", "kvstack-retrieval", "--recipes", "identity", "--tasks", "nosuch"], "unknown task"),
    (["eval", "--recipes", "identity", "--lengths", "abc"], "not a token count"),
    (["report", "/nonexistent.jsonl"], "does not exist"),
    (["paired", "/nonexistent.jsonl"], "does not exist"),
    (["paired", "/nonexistent.jsonl", "--against", "nosuch:1"], "unknown stage 'nosuch'"),
    (["diagnose", "--model", "/nonexistent"], "neither a bundled name"),
    (["inspect", "--model", "/nonexistent"], "neither a bundled name"),
    (["calibrate", "--model", "/nonexistent"], "required: --out"),
    (["serve", "--store", "STORE", "--port", "99999", "--token", "abcdefgh12"], "is not a TCP port"),
    (["serve", "--store", "STORE", "--port", "0", "--token", "S"], "at least 8 characters"),
    (["push", "/nonexistent.kvw", "--server", "http://127.0.0.1:1", "--token", "abcdefgh12"], "no cache file"),
    (["pull", "nosuchkey", "--out", "OUT", "--server", "http://127.0.0.1:1", "--token", "abcdefgh12"],
     "must look like"),
    (["caches", "--server", "http://127.0.0.1:1", "--token", "abcdefgh12"], "cannot reach"),
    (["caches", "--server", "notaurl"], "must start with http"),
    (["bench", "ttft", "--tokens", "abc"], "not a token count"),
    (["bench", "nosuch"], "invalid choice"),
]


def test_every_command_is_covered():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) <= {argv[0] for argv, _ in BROKEN}


@pytest.mark.parametrize("argv, phrase", BROKEN, ids=[" ".join(a[:3]) for a, _ in BROKEN])
def test_broken_arguments_give_one_clear_error_and_exit_2(argv, phrase, tmp_path, capsys):
    argv = [str(tmp_path / a) if a in ("STORE", "OUT") else a for a in argv]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    assert phrase in err and "Traceback" not in err
    assert "error:" in err.strip().splitlines()[-1]  # the last line says what went wrong


def test_a_reader_that_leaves_early_is_not_an_error():
    """`kvstack recipes | head -1`: the pipe closes after one line; no traceback, exit 0."""
    import subprocess
    import sys

    proc = subprocess.run(f"{sys.executable} -m kvstack.cli recipes | head -1", shell=True, capture_output=True,
                          text=True, timeout=120)
    assert proc.stdout.startswith("stage") and "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr
