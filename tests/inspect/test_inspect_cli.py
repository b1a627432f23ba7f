"""`kvstack inspect` and `kvstack calibrate` end to end on a local model directory built here."""

from __future__ import annotations

import argparse
import json
import re

import pytest
import torch

import kvstack
from kvstack.errors import KvstackError
from kvstack.inspect.cli import register
from kvstack.stages.lowrank.rows import LowRankRows

PNG = b"\x89PNG\r\n\x1a\n"


def cli(argv: list[str]) -> int:
    """What ``kvstack.cli.main`` does with a registered command: run it, exit 2 on a kvstack error."""
    import sys

    parser = argparse.ArgumentParser(prog="kvstack")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KvstackError as exc:
        print(f"kvstack: error: {exc}", file=sys.stderr)
        return 2


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random Llama plus a BPE tokenizer trained on the spot, saved as an HF directory."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("tiny-llama-inspect")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    text = ["the quick brown fox jumps over the lazy dog " * 4, "startup founders visa ten thousand " * 4]
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(d)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, eos_token_id=2, bos_token_id=1)
    LlamaForCausalLM(cfg).save_pretrained(d)
    (d / "context.txt").write_text("the quick brown fox jumps over the lazy dog. " * 12)
    return d


def test_inspect_prints_the_table_and_writes_heatmaps_and_json(model_dir, tmp_path, capsys):
    out = tmp_path / "inspect"
    code = cli(["inspect", "--model", str(model_dir), "--context-file", str(model_dir / "context.txt"),
                "--tokens", "60", "--sink-tokens", "2", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    assert re.search(r"60 tokens, 3 layers, 2 KV heads of 16", text)
    assert len(re.findall(r"^[0-2]\s", text, re.M)) == 3  # one table row per layer
    assert "before RoPE, keys need" in text and "first 2 tokens get" in text
    stats = json.loads((out / "stats.json").read_text())
    assert stats["context_tokens"] == 60 and len(stats["layers"]) == 3 and len(stats["cos_k"]) == 3
    assert all(0 < layer["k_rank"][1] <= 16 for layer in stats["layers"])
    for name in ("similarity", "rank", "channels", "sinks"):
        png = (out / f"inspect_{name}.png").read_bytes()
        assert png.startswith(PNG) and len(png) > 5000


def test_inspect_json_output(model_dir, capsys):
    assert cli(["inspect", "--model", str(model_dir), "--context-file", str(model_dir / "context.txt"),
                "--tokens", "20", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["sink_tokens"] == 4 and len(data["sink_heads"]) == 3 and len(data["sink_heads"][0]) == 4


@pytest.mark.parametrize(
    "argv, phrase",
    [
        (["inspect", "--context-file", "/nonexistent.txt"], "does not exist"),
        (["inspect", "--tokens", "0"], "--tokens 0"),
        (["inspect", "--model", "/nonexistent-model-dir"], "neither a bundled name"),
        (["calibrate", "--out", "x", "--calibration", "/nonexistent.txt"], "does not exist"),
    ],
)
def test_errors_exit_2_with_a_message(argv, phrase, capsys):
    assert cli(argv) == 2
    assert phrase in capsys.readouterr().err


def test_calibrate_writes_a_basis_that_recipes_use(model_dir, tmp_path, capsys):
    out = tmp_path / "bases" / "tiny"
    code = cli(["calibrate", "--model", str(model_dir), "--calibration", str(model_dir / "context.txt"),
                "--tokens", "100", "--seq-len", "40", "--out", str(out)])
    assert code == 0
    assert "fitted on 100 tokens in 3 sequences" in capsys.readouterr().out
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["pre_rope"] and meta["num_layers"] == 3 and meta["head_dim"] == 16
    model, tok = kvstack.zoo.load(str(model_dir))
    ids = tok("the lazy dog jumps over the quick fox", return_tensors="pt").input_ids[0]
    cache = kvstack.compress(model, ids, f"svd:rank=4,sink=0,basis={out}")
    assert isinstance(cache.layers[0].keys, LowRankRows) and not cache.layers[0].keys.owns_basis
    assert cache.nbytes == 3 * 2 * 2 * ids.numel() * 4 * 4  # layers x K,V x heads x tokens x rank x fp32


def test_help_documents_both_commands_with_examples(capsys):
    for command in ("inspect", "calibrate"):
        with pytest.raises(SystemExit):
            cli([command, "--help"])
        text = capsys.readouterr().out
        assert "examples:" in text and f"kvstack {command}" in text
