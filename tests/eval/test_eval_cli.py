"""`kvstack eval` end to end on a tiny local model directory: one row per cell, bytes as
counted, deterministic, resumable after a truncated write, and clear errors that lose nothing."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from kvstack.eval.results import read_rows, row_key
from kvstack.eval.runner import TIMING_FIELDS, parse_length

from .cli_helper import run_cli

RECIPES = ["identity", "int8", "streaming:sink=4,window=64", "q2c:0.5"]


def eval_argv(model_dir, out, samples=2, tasks=("niah_single", "ppl")):
    return ["eval", "--model", str(model_dir), "--recipes", *RECIPES, "--tasks", *tasks, "--lengths", "256",
            "--samples", str(samples), "--max-new-tokens", "4", "--out", str(out), "--quiet", "--threads", "1"]


def stable(rows):
    return sorted(json.dumps({k: v for k, v in r.items() if k not in TIMING_FIELDS}, sort_keys=True)
                   for r in rows)


@pytest.fixture(scope="module")
def first_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "a.jsonl"
    assert run_cli(eval_argv(tiny_model_dir, out)) == 0
    return out


def test_one_row_per_cell_with_counted_bytes(first_run):
    rows, truncated = read_rows(first_run)
    assert not truncated and len(rows) == 2 * 2 * len(RECIPES)
    assert len({row_key(r) for r in rows}) == len(rows)
    ok = [r for r in rows if r["status"] == "ok"]
    for r in ok:
        # fp32, 2 layers x 2 KV heads x head_dim 16, keys and values: 512 bytes per token uncompressed
        assert r["dense_bytes"] == 512 * r["context_tokens"]
        if r["recipe"] == "identity":
            assert r["cache_bytes"] == r["dense_bytes"] and r["ratio"] == 1.0
        if r["recipe"] == "streaming:sink=4,window=64":  # 68 tokens kept, positions stored as int32
            assert r["cache_bytes"] == 2 * (512 // 2 * 68 + 4 * 68)
        if r["recipe"] == "int8":  # int8 codes + one fp16 scale per 16-channel row group
            assert r["cache_bytes"] == 2 * 2 * 2 * r["context_tokens"] * (16 + 2)
    skipped = [r for r in rows if r["status"] == "skipped"]
    assert {(r["task"], r["recipe"]) for r in skipped} == {("ppl", "q2c:0.5")}
    assert "no question" in skipped[0]["reason"]
    assert all("prediction" in r for r in ok if r["task"] == "niah_single")
    assert all(r["nll_tokens"] > 100 and r["nll_sum"] > 0 for r in ok if r["task"] == "ppl")


def test_rerun_into_another_file_gives_identical_rows(first_run, tiny_model_dir, tmp_path):
    again = tmp_path / "b.jsonl"
    assert run_cli(eval_argv(tiny_model_dir, again)) == 0
    assert stable(read_rows(again)[0]) == stable(read_rows(first_run)[0])


def test_resume_redoes_only_a_truncated_cell_and_new_samples(first_run, tiny_model_dir, tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    data = first_run.read_bytes()
    path.write_bytes(data[: data.rstrip(b"\n").rfind(b"\n") + 1 + 30])  # last row cut after 30 bytes
    capsys.readouterr()
    assert run_cli(eval_argv(tiny_model_dir, path)) == 0
    captured = capsys.readouterr()
    assert "removed a truncated last line (30 bytes)" in captured.err
    assert f"{len(RECIPES) * 4 - 1} already done" in captured.out  # only the cut cell ran again
    assert stable(read_rows(path)[0]) == stable(read_rows(first_run)[0])
    assert run_cli(eval_argv(tiny_model_dir, path, samples=3)) == 0
    out = capsys.readouterr().out
    assert f"{len(RECIPES) * 2 - 1} cells run, 1 skipped" in out and f"{len(RECIPES) * 4} already done" in out
    assert run_cli(eval_argv(tiny_model_dir, path, samples=3)) == 0
    assert "0 cells run" in capsys.readouterr().out


def test_eval_ends_with_the_grid_s_results_table_and_says_where_results_are(first_run, tiny_model_dir, tmp_path,
                                                                          capsys):
    import re

    path = tmp_path / "t.jsonl"
    path.write_bytes(first_run.read_bytes())
    other = json.loads(first_run.read_text().splitlines()[0])
    with path.open("a") as f:  # a row of another grid in the same file stays out of the table
        f.write(json.dumps({**other, "recipe": "int4", "task": "niah_single"}) + "\n")
    capsys.readouterr()
    assert run_cli(eval_argv(tiny_model_dir, path)) == 0
    out = capsys.readouterr().out
    assert "0 cells run" in out
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("task "))
    assert lines[head].split() == ["task", "length", "recipe", "n", "score", "vs", "full", "cache", "bytes",
                                   "ratio", "vs", "fp16"]
    body = [line for line in lines[head + 2:] if line.strip()][: 2 * len(RECIPES)]
    assert [line.split()[0] for line in body] == ["niah_single"] * len(RECIPES) + ["ppl"] * len(RECIPES)
    assert not any(" int4 " in line for line in lines)
    rows = {line.split()[2]: line for line in body[: len(RECIPES)]}
    assert set(rows) == set(RECIPES)
    # an fp32 tiny model's plain cache is 0.50x against fp16 (vs full: '-' as the random model scores 0%)
    assert re.search(r"identity\s+2\s+\d+%\s+(100%|-)\s+[\d.]+ KiB\s+0\.50x", rows["identity"])
    assert re.search(r"int8\s+2\s+\d+%\s+(\d+%|-)\s+[\d.]+ KiB\s+1\.78x", rows["int8"])  # 16 B codes + 2 B scale
    ppl_identity = next(line for line in body[len(RECIPES):] if " identity " in line)
    assert "ppl " in ppl_identity and "+0.000 ppl" in ppl_identity
    assert "q2c:0.5" in out and "skipped: InputError" in out  # the ppl cells q2c cannot run
    assert f"results: {path.resolve()}" in out and f"kvstack report {path}" in out


def test_resume_on_another_device_says_where_finished_cells_ran(first_run, tiny_model_dir, tmp_path, capsys):
    path = tmp_path / "d.jsonl"
    rows, _ = read_rows(first_run)
    path.write_text("".join(json.dumps({**r, "device": "cuda:0"}) + "\n" for r in rows))
    capsys.readouterr()
    assert run_cli(eval_argv(tiny_model_dir, path, samples=3)) == 0
    err = capsys.readouterr().err
    assert "finished cells in" in err and "ran on cuda:0" in err and "new ones run on cpu" in err
    new = [r for r in read_rows(path)[0] if r["index"] == 2]
    assert new and all(r["device"] == "cpu" for r in new)  # the new rows record their own device
    assert run_cli(eval_argv(tiny_model_dir, first_run)) == 0  # same device, nothing to run: no note
    assert "ran on" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "change, phrase",
    [
        (["--tasks", "nosuch"], "unknown task 'nosuch'"),
        (["--recipes", "identity", "nosuch:0.5"], "unknown stage 'nosuch'"),
        (["--recipes", "kvpress:Snap"], "bad kvpress recipe"),
        (["--lengths", "1q"], "not a token count"),
        (["--samples", "0"], "at least 1 sample"),
    ],
)
def test_bad_input_exits_2_and_leaves_results_untouched(first_run, tiny_model_dir, tmp_path, capsys, change, phrase):
    path = tmp_path / "keep.jsonl"
    shutil.copy(first_run, path)
    before = path.read_bytes()
    argv = eval_argv(tiny_model_dir, path)
    flag = change[0]
    i = argv.index(flag)
    j = i + 1
    while j < len(argv) and not argv[j].startswith("--"):
        j += 1
    argv[i:j] = change
    assert run_cli(argv) == 2
    assert phrase in capsys.readouterr().err
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    "device, phrase",
    [("tpu", "give cpu, cuda or cuda:N"), ("cuda:x", "give cpu, cuda or cuda:N")]
    + ([] if torch.cuda.is_available() else [("cuda", "no CUDA device")]),
)
def test_bad_device_exits_2_before_loading_and_keeps_results(first_run, tiny_model_dir, tmp_path, capsys, device,
                                                             phrase):
    path = tmp_path / "keep.jsonl"
    shutil.copy(first_run, path)
    before = path.read_bytes()
    assert run_cli([*eval_argv(tiny_model_dir, path), "--device", device]) == 2
    assert phrase in capsys.readouterr().err
    assert path.read_bytes() == before


def test_rows_record_the_device_they_ran_on(first_run):
    rows, _ = read_rows(first_run)
    assert {r["device"] for r in rows} == {"cpu"}


def test_model_directory_without_tokenizer_is_explained(tiny_model_dir, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in tiny_model_dir.iterdir():
        if f.name.startswith(("config", "model", "generation")):
            shutil.copy(f, bare / f.name)
    assert run_cli(eval_argv(bare, tmp_path / "x.jsonl")) == 2
    assert "has no tokenizer" in capsys.readouterr().err


def test_corrupt_results_file_is_refused_not_overwritten(first_run, tiny_model_dir, tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    lines = first_run.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + "garbage\n" + "".join(lines[1:]))
    before = path.read_bytes()
    assert run_cli(eval_argv(tiny_model_dir, path)) == 2
    assert "line 2" in capsys.readouterr().err
    assert path.read_bytes() == before


def test_report_writes_markdown_and_plots(first_run, tmp_path, capsys):
    out = tmp_path / "rep"
    assert run_cli(["report", str(first_run), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    for recipe in RECIPES:
        assert f"`{recipe}`" in text
    assert "## niah_single" in text and "## ppl" in text and "perplexity" in text
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["niah_single_256.png", "ppl_256.png"]
    for p in pngs:
        data = (out / p).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


@pytest.mark.parametrize("text, tokens", [("512", 512), ("1k", 1024), ("1.5k", 1536), ("8K", 8192)])
def test_parse_length(text, tokens):
    assert parse_length(text) == tokens


@pytest.mark.slow
def test_kvpress_side_by_side_on_identical_inputs(tiny_model_dir, tmp_path):
    """kvpress in its own venv on the same ids: no press = kvstack's identity, and StreamingLLMPress
    holds exactly the tokens it keeps (uniform eviction physically drops them)."""
    from kvstack.eval.peers.kvpress_bridge import peers_python

    try:
        peers_python()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(str(exc))
    out = tmp_path / "p.jsonl"
    recipes = ["identity", "kvpress:none", "kvpress:StreamingLLMPress:0.5", "kvpress:SnapKVPress:0.75",
               "kvpress:NoSuchPress:0.5"]
    argv = ["eval", "--model", str(tiny_model_dir), "--recipes", *recipes, "--tasks", "niah_single", "ppl",
            "--lengths", "256", "--samples", "1", "--max-new-tokens", "4", "--out", str(out), "--quiet"]
    assert run_cli(argv) == 0
    by = {(r["task"], r["recipe"]): r for r in read_rows(out)[0]}
    for task in ("niah_single", "ppl"):
        full, none = by[(task, "identity")], by[(task, "kvpress:none")]
        assert none["cache_bytes"] == full["cache_bytes"] == 512 * full["context_tokens"]
        if task == "ppl":
            assert none["nll_sum"] == pytest.approx(full["nll_sum"], rel=1e-5)
        else:
            assert none["prediction"] == full["prediction"]
            assert none["answer_nll_sum"] == pytest.approx(full["answer_nll_sum"], rel=1e-5)
        stream = by[(task, "kvpress:StreamingLLMPress:0.5")]
        t = stream["context_tokens"]
        # kvpress keeps int(n * (1 - compression_ratio)) tokens of every head and layer
        assert stream["cache_bytes"] == 512 * int(t * (1 - 0.5)) and stream["status"] == "ok"
        assert by[(task, "kvpress:SnapKVPress:0.75")]["cache_bytes"] == 512 * int(t * (1 - 0.75))
        bad = by[(task, "kvpress:NoSuchPress:0.5")]
        assert bad["status"] == "skipped" and "no press 'NoSuchPress'" in bad["reason"]
