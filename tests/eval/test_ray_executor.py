"""`kvstack eval --executor ray` on a local Ray cluster (2 CPUs) with the tiny fixture model: the
same rows as in-process, a failing cell recorded while the sweep goes on, resume, and typed errors
for what cannot run. Ray starts once per module (its start-up takes seconds)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
from pathlib import Path

import pytest

from kvstack.errors import MissingDependencyError
from kvstack.eval.cli import make_executor
from kvstack.eval.results import read_rows
from kvstack.grammar.catalog import SPECS
from kvstack.stack import REGISTRY

from .cli_helper import run_cli
from .test_eval_cli import RECIPES, eval_argv, stable

CELLS = 2 * 2 * len(RECIPES)  # niah_single and ppl, 2 samples each


@pytest.fixture(scope="module")
def failing_stages():
    """The ``explode`` and ``crash`` stages, registered for this module only."""
    from . import failing_stage

    yield failing_stage
    for name in ("explode", "crash"):
        REGISTRY.pop(name, None)
        SPECS.pop(name, None)  # register() declared them in the grammar's list too


@pytest.fixture(scope="module")
def ray_cluster(failing_stages):
    import ray

    # the workers import the failing stages by the name this test process gave their module
    root = Path(failing_stages.__file__).parents[failing_stages.__name__.count(".")]
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # CI reaches no usage-statistics server
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 2**20, logging_level=logging.WARNING,
             runtime_env={"env_vars": {"PYTHONPATH": str(root)}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def in_process(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("inproc") / "a.jsonl"
    assert run_cli(eval_argv(tiny_model_dir, out)) == 0
    return out


def ray_argv(model_dir, out, recipes):
    argv = eval_argv(model_dir, out)
    i = argv.index("--recipes")
    return [*argv[: i + 1], *recipes, *argv[i + 1 + len(RECIPES):], "--executor", "ray"]


def test_ray_rows_equal_in_process_and_a_failing_cell_is_recorded(ray_cluster, in_process, tiny_model_dir,
                                                                  tmp_path, capsys):
    out = tmp_path / "ray.jsonl"
    code = run_cli(ray_argv(tiny_model_dir, out, [*RECIPES, "explode"]))
    captured = capsys.readouterr()
    assert code == 1  # errors were recorded: the command says so by its exit status
    assert "ray: 2 workers" in captured.err and "4 errors" in captured.out
    rows, truncated = read_rows(out)
    assert not truncated and len(rows) == CELLS + 4
    failed = [r for r in rows if r["recipe"] == "explode"]
    assert len(failed) == 4 and all(r["status"] == "error" for r in failed)
    assert all(r["reason"] == "RuntimeError: explode: this stage fails on every cell" for r in failed)
    assert all("failing_stage.py" in r["traceback"] for r in failed)
    assert "error: niah_single length 256 sample 0 'explode': RuntimeError" in captured.err
    # every other cell shared its prefill with the failing one and still equals the in-process run
    assert stable([r for r in rows if r["recipe"] != "explode"]) == stable(read_rows(in_process)[0])


def test_a_worker_that_dies_costs_its_cells_only_and_resume_redoes_them(ray_cluster, in_process, tiny_model_dir,
                                                                        tmp_path, capsys):
    path = tmp_path / "resume.jsonl"
    lines = in_process.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(lines[:-3]), encoding="utf-8")  # an in-process run that stopped 3 cells short
    dropped = [json.loads(line) for line in lines[-3:]]
    last = dropped[-1]  # the last sample's job holds the 3 missing cells; its context kills the worker
    crash = f"crash:tokens={last['context_tokens']}"
    assert sum(json.loads(line)["context_tokens"] == last["context_tokens"] for line in lines) == len(RECIPES)
    capsys.readouterr()
    # one worker: jobs run in order, so the dying job is the last and no other job is queued behind it
    assert run_cli([*ray_argv(tiny_model_dir, path, [*RECIPES, crash]), "--workers", "1"]) == 1
    captured = capsys.readouterr()
    assert f"3 cells run, 0 skipped, 4 errors, {CELLS - 3} already done" in captured.out
    rows = read_rows(path)[0][len(lines) - 3:]
    died = [r for r in rows if r["status"] == "error"]
    assert {r["recipe"] for r in died} == {crash} | {r["recipe"] for r in dropped}
    assert all(r["index"] == last["index"] and r["task"] == last["task"] for r in died)
    assert all("ActorDiedError" in r["reason"] for r in died)
    assert all(r["status"] == "ok" for r in rows if r not in died)  # the crash stage passed the others through
    # resume: error rows are redone, finished cells are not
    assert run_cli([*ray_argv(tiny_model_dir, path, RECIPES), "--workers", "1"]) == 0
    ran, skipped = sum(r["status"] == "ok" for r in dropped), sum(r["status"] == "skipped" for r in dropped)
    assert f"{ran} cells run, {skipped} skipped, 0 errors, {CELLS - 3} already done" in capsys.readouterr().out
    final = [r for r in read_rows(path)[0] if r["status"] != "error" and r["recipe"] in RECIPES]
    assert stable(final) == stable(read_rows(in_process)[0])
    assert run_cli(ray_argv(tiny_model_dir, path, RECIPES)) == 0
    assert f"0 cells run, 0 skipped, 0 errors, {CELLS} already done" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--device", "cuda"], "no node of the Ray cluster offers a GPU"),
    (["--device", "cuda:1"], "pass --device cuda"),
    (["--workers", "3"], "holds at most 2 workers"),
    (["--workers", "0"], "give at least 1"),
    (["--recipes", "identity", "kvpress:none"], "kvpress recipes run in this machine's peers venv"),
])
def test_what_ray_cannot_run_is_a_typed_error_that_writes_nothing(ray_cluster, tiny_model_dir, tmp_path, capsys,
                                                                    extra, message):
    out = tmp_path / "r.jsonl"
    argv = ray_argv(tiny_model_dir, out, RECIPES)
    if extra[0] == "--recipes":
        i = argv.index("--recipes")
        argv = [*argv[:i], *extra, *argv[i + 1 + len(RECIPES):]]
    else:
        argv += extra
    assert run_cli(argv) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_without_ray_installed_the_error_names_the_install_command(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as on a machine without it
    with pytest.raises(MissingDependencyError, match=r"pip install 'kvstack\[ray\]'"):
        make_executor("ray")
    out = tmp_path / "r.jsonl"
    assert run_cli(ray_argv(tiny_model_dir, out, RECIPES)) == 2
    assert "pip install 'kvstack[ray]'" in capsys.readouterr().err and not out.exists()


def test_address_and_workers_without_ray_are_refused(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert run_cli([*eval_argv(tiny_model_dir, out), "--address", "auto"]) == 2
    assert "--address is for --executor ray" in capsys.readouterr().err and not out.exists()


def test_a_worker_that_cannot_load_the_model_stops_the_run_with_its_typed_error(ray_cluster, tiny_model_dir,
                                                                                tmp_path, capsys):
    # the driver reads only the tokenizer and config; the weights are missing where the workers look
    model = tmp_path / "no-weights"
    shutil.copytree(tiny_model_dir, model, ignore=shutil.ignore_patterns("*.safetensors"))
    out = tmp_path / "r.jsonl"
    assert run_cli([*ray_argv(model, out, RECIPES), "--workers", "1"]) == 2
    assert f"could not load model or tokenizer from '{model}'" in capsys.readouterr().err
    assert not out.exists()


def test_an_address_where_no_cluster_listens_fails_at_once(tiny_model_dir, tmp_path, capsys):
    with socket.socket() as sock:  # a port nothing listens on (Ray itself would retry it for minutes)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "r.jsonl"
    assert run_cli([*ray_argv(tiny_model_dir, out, RECIPES), "--address", f"127.0.0.1:{port}"]) == 2
    assert f"nothing answers at 127.0.0.1:{port}" in capsys.readouterr().err and not out.exists()


def test_in_process_an_unexpected_failure_still_stops_the_run(failing_stages, tiny_model_dir, tmp_path):
    # the default executor is unchanged: it fails fast, keeping the rows written before the failure
    out = tmp_path / "r.jsonl"
    argv = ray_argv(tiny_model_dir, out, ["identity", "explode"])[:-2]  # without --executor ray
    with pytest.raises(RuntimeError, match="explode"):
        run_cli(argv)
    assert [(r["recipe"], r["status"]) for r in read_rows(out)[0]] == [("identity", "ok")]
