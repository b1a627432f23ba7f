"""Real processes: `kvstack serve` as a subprocess, `push`/`pull` from the command line, and the
agents example: process A prefills and pushes, process B pulls and answers without prefill,
and B's answer is token for token the answer of a local run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transport_helpers import TOKEN, tiny_llama

import kvstack
from kvstack import wire
from kvstack.transport.keys import recipe_variant

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvstack.transport", "serve", "--store", str(store), "--port", "0", "--token", TOKEN],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )
    line = proc.stdout.readline()
    assert "listening on http://127.0.0.1:" in line, proc.stderr.read()
    yield line.split("listening on ")[1].split()[0], store
    proc.terminate()
    proc.wait(10)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvstack.transport", *args], capture_output=True, text=True,
                          env=ENV, timeout=120)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny Llama with a word-level tokenizer, saved like any Hugging Face model directory."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    where = tmp_path_factory.mktemp("tiny")
    words = ["[UNK]", "<s>", "</s>", "Question", "Answer", ":", "?", "."] + [f"w{i}" for i in range(120)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="<s>", eos_token="</s>",
                            pad_token="[UNK]").save_pretrained(where)
    tiny_llama(seed=3).save_pretrained(where)
    text = " ".join(f"w{(i * 37) % 120}" for i in range(90)) + " ."
    (where / "doc.txt").write_text(text)
    return where


def test_cli_push_and_pull_move_a_file_exactly(server, tmp_path):
    url, store = server
    model = tiny_llama()
    cache = kvstack.compress(model, torch.arange(3, 40), "int3:g8")
    src = tmp_path / "a.kvw"
    wire.save(cache, src)
    pushed = cli("push", str(src), "--server", url, "--token", TOKEN)
    assert pushed.returncode == 0, pushed.stderr
    key = pushed.stdout.strip()
    variant = recipe_variant(cache.recipe)
    assert key == f"{cache.model_fingerprint}/{wire.prefix_hash(cache.context_ids)}/{variant}"
    assert (store / cache.model_fingerprint / f"{key.split('/')[1]}.{variant}.kvw").read_bytes() == src.read_bytes()
    # the other commands in-process (an interpreter start-up costs seconds on shared CI cores)
    from kvstack.transport.__main__ import main

    assert main(["pull", key, "--out", str(tmp_path / "b.kvw"), "--server", url, "--token", TOKEN]) == 0
    assert (tmp_path / "b.kvw").read_bytes() == src.read_bytes()
    assert key in [e["key"] for e in json.loads(capsys_text(main, ["caches", "--json", "--server", url,
                                                                   "--token", TOKEN]))]
    assert main(["pull", key, "--out", str(tmp_path / "c.kvw"), "--server", url, "--token", "wrong-token-1"]) == 2
    assert not (tmp_path / "c.kvw").exists()


def capsys_text(fn, argv) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert fn(argv) == 0
    return out.getvalue()


def test_serve_without_a_token_refuses_to_start(tmp_path, capsys):
    from kvstack.transport.__main__ import main

    assert main(["serve", "--store", str(tmp_path), "--port", "0"]) == 2
    assert "--token" in capsys.readouterr().err


def test_serve_on_a_busy_port_names_it_and_how_to_pick_another(server, tmp_path, capsys):
    from kvstack.cli import main

    port = server[0].rsplit(":", 1)[1]  # the running server's port
    assert main(["serve", "--store", str(tmp_path), "--port", port, "--token", TOKEN]) == 2
    err = capsys.readouterr().err
    assert f"port {port} on 127.0.0.1 is already in use" in err and "--port 0" in err
    assert "Traceback" not in err


def test_agent_b_answers_from_agent_a_s_cache_like_a_local_run(server, model_dir):
    url, _ = server
    common = ["--model", str(model_dir), "--context-file", str(model_dir / "doc.txt"), "--token", TOKEN,
              "--server", url, "--recipe", "snapkv:0.5,window=8 > int4:g8", "--max-new-tokens", "10"]
    example = str(ROOT / "examples" / "agents.py")

    def agent(*args: str) -> dict:
        done = subprocess.run([sys.executable, example, *args, *common], capture_output=True, text=True, env=ENV,
                              timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    a = agent("prefill")
    b = agent("answer", "--question", "w5 w9 ?")
    assert a["key"] == b["key"] and a["tokens"] > 80
    # the local reference, computed here in this process with the same model files
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import agents
    finally:
        sys.path.pop(0)
    args = agents.main.__globals__["argparse"].Namespace(
        model=str(model_dir), context_file=str(model_dir / "doc.txt"), essay=None, question="w5 w9 ?",
        recipe="snapkv:0.5,window=8 > int4:g8", max_new_tokens=10)
    ref = agents.local(args)
    assert b["answer_ids"] == ref["answer_ids"] and len(ref["answer_ids"]) == 10
