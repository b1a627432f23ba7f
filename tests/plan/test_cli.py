"""``kvstack plan`` through run_plan / ``python -m kvstack.plan``: exit codes, output, JSON."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvstack.plan.__main__ import main
from kvstack.plan.cli import register, run_plan

ROOT = Path(__file__).resolve().parents[2]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_register_adds_plan_with_run_plan():
    parser = argparse.ArgumentParser(prog="kvstack")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["plan", "llama-3.1-8b", "--context", "32K"])
    assert args.func is run_plan and args.models == ["llama-3.1-8b"] and args.context == "32K"


def test_help_documents_every_option_and_examples(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for option in (
        "--context",
        "--batch",
        "--dtype",
        "--group-size",
        "--bits",
        "--recipe",
        "--gqa",
        "--head-dim",
        "--mla",
        "--window",
        "--local-global",
        "--share-layers",
        "--device-memory",
        "--weights",
        "--json",
        "--plot",
        "--per-layer",
        "--list-presets",
    ):
        assert option in out
    assert "examples:" in out and "kvstack plan llama-3.1-8b --context 128K" in out


def test_json_schema_exactly(capsys):
    code, out, _ = run(capsys, "llama-3.1-8b", "--context", "128K", "--json")
    assert code == 0
    data = json.loads(out)
    assert set(data) == {"model", "context", "batch", "total_bytes", "layers"}
    assert data["model"] == "llama-3.1-8b" and data["context"] == 131072 and data["batch"] == 1
    assert data["total_bytes"] == 32 * 131072 * 4096 == 17_179_869_184
    assert len(data["layers"]) == 32
    for i, layer in enumerate(data["layers"]):
        assert layer == {"index": i, "kind": "global", "tokens_held": 131072, "bytes": 536_870_912}
    assert isinstance(data["total_bytes"], int)


def test_json_batch_and_several_models(capsys):
    code, out, _ = run(
        capsys, "deepseek-v3", "llama-3.1-405b", "--context", "1K", "--batch", "3", "--json"
    )
    assert code == 0
    data = json.loads(out)
    assert [d["model"] for d in data] == ["deepseek-v3", "llama-3.1-405b"]
    assert data[0]["total_bytes"] == 3 * 1024 * 70_272
    assert data[1]["total_bytes"] == 3 * 1024 * 516_096
    assert sum(layer["bytes"] for layer in data[0]["layers"]) == data[0]["total_bytes"]


def test_table_output(capsys):
    code, out, _ = run(capsys, "gemma-3-27b", "--context", "128K")
    assert code == 0
    assert "10.41 GiB" in out and "11,173,625,856 bytes" in out
    assert "sliding" in out and "global" in out and "window 1,024" in out


def test_what_if_comparison_line(capsys):
    code, out, _ = run(capsys, "llama-2-7b", "--gqa", "8", "--context", "4K")
    assert code == 0
    assert "llama-2-7b +gqa 8" in out
    assert "0.25x (-75.0%)" in out  # 8 of 32 KV heads


def test_recipe_comparison(capsys):
    code, out, _ = run(
        capsys, "llama-3.1-8b", "--context", "128K", "--recipe", "snapkv:0.25 > int4"
    )
    assert code == 0
    # 32 layers x 32,768 tokens x (1280 B int4: 5 bits x 2048 + 32 B position tags) = 1,375,731,712 bytes
    assert "1.28 GiB" in out and "(-92.0%)" in out
    assert "analytic estimate" in out


def test_device_memory_lines(capsys):
    code, out, _ = run(capsys, "llama-3.1-8b", "--device-memory", "24GiB", "--context", "8K")
    assert code == 0
    assert "longest context at batch 1: 74,075 tokens" in out
    assert "largest batch at context 8K: 9" in out


def test_json_stays_valid_with_device_memory(capsys):
    code, out, err = run(capsys, "llama-3.1-8b", "--device-memory", "24GiB", "--json")
    assert code == 0 and json.loads(out)["total_bytes"] == 8192 * 131072
    assert "74,075" in err


def test_list_presets(capsys):
    code, out, _ = run(capsys, "--list-presets")
    assert code == 0
    for name in ("llama-3.1-405b", "deepseek-v3", "gemma-4-e2b", "smollm2-135m", "gpt2"):
        assert name in out
    assert "70,272" in out and "516,096" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["llama-9"], "neither a preset"),
        (["llama-3.1-8b", "--dtype", "int5"], "unknown cache dtype"),
        (["llama-3.1-70b", "--device-memory", "80GB"], "do not fit"),
        (["llama-3.1-8b", "--context", "lots"], "cannot read context"),
        (["llama-3.1-8b", "--recipe", "zip:0.5"], "unknown stage"),
        (["llama-3.1-8b", "--gqa", "3"], "divisor"),
        (["llama-3.1-8b", "--device-memory", "8G"], "ambiguous"),
        ([], "at least one MODEL"),
    ],
)
def test_errors_exit_2_with_one_line(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("kvstack plan: error:") and message in err


def test_missing_field_in_config_file(capsys, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4})
    )
    code, _, err = run(capsys, str(path))
    assert code == 2 and "num_hidden_layers" in err


def test_plot_writes_png(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    out_png = tmp_path / "cache.png"
    code, out, _ = run(capsys, "llama-3.1-8b", "mistral-7b", "--gqa", "4", "--plot", str(out_png))
    assert code == 0 and out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_python_dash_m_entry_point():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "kvstack.plan", "deepseek-v3", "--context", "1", "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["total_bytes"] == 70_272
    bad = subprocess.run(
        [sys.executable, "-m", "kvstack.plan", "nope-model"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert bad.returncode == 2 and "neither a preset" in bad.stderr


def test_planner_imports_no_heavy_dependencies():
    code = (
        "import sys, kvstack.plan, kvstack.plan.cli, kvstack.plan.report; "
        "heavy = ('torch', 'transformers', 'matplotlib', 'numpy'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
