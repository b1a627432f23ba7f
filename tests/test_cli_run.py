"""The command line, end to end on a local model directory built here (no downloads)."""

import re

import pytest
import torch

from kvstack.cli import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random Llama plus a real BPE tokenizer trained on the spot, saved as an HF directory."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("tiny-llama")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    text = ["the quick brown fox jumps over the lazy dog " * 4, "startup founders visa ten thousand " * 4]
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(d)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, eos_token_id=2, bos_token_id=1)
    LlamaForCausalLM(cfg).save_pretrained(d)
    ctx = d / "context.txt"
    ctx.write_text("the quick brown fox jumps over the lazy dog. " * 12)
    return d


def test_run_prints_the_memory_table_and_both_answers(model_dir, capsys):
    code = main(["run", "--model", str(model_dir), "--context-file", str(model_dir / "context.txt"),
                 "--question", "what jumps?", "--recipe", "streaming:sink=2,window=16 > int8",
                 "--max-new-tokens", "4", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert "full (identity)" in out and "streaming:sink=2,window=16 > int8" in out
    assert "vs fp16" in out and "vs model fp32" in out  # every ratio names its baseline
    full_row = next(line for line in out.splitlines() if line.startswith("full (identity)"))
    ratios = [float(m) for m in re.findall(r"(\d+\.\d+)x", full_row)]
    assert ratios == [0.5, 1.0]  # a plain fp32 cache is half as small as fp16, equal to the model's own
    said = re.search(r"(\d+\.\d+)x smaller than an fp16 cache \((\d+\.\d+)x smaller than the model.s own fp32", out)
    assert said and float(said[1]) > 2.0 and float(said[2]) == pytest.approx(2 * float(said[1]), rel=0.01)
    assert out.count("[") >= 2 and "Q: what jumps?" in out


def test_a_window_longer_than_the_context_keeps_everything_with_a_note(model_dir, capsys):
    code = main(["run", "--model", str(model_dir), "--context-file", str(model_dir / "context.txt"),
                 "--question", "what jumps?", "--recipe", "streaming:window=5000", "--max-new-tokens", "2",
                 "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert "note: streaming keeps sink+window=5004 tokens" in out and "everything kept" in out
    rows = [line for line in out.splitlines() if line.startswith(("full (identity) ", "streaming:window=5000 "))]
    assert len(rows) == 2 and rows[0].split()[4:8] == rows[1].split()[3:7]  # same bytes, same ratios
    assert "1.00x the size of the model's own fp32 cache" in out


def test_a_recipe_that_cannot_fit_fails_before_the_model_loads(model_dir, capsys, monkeypatch):
    import kvstack.zoo

    def no_weights(*args, **kwargs):
        raise AssertionError("the weights were loaded before the input was checked")

    monkeypatch.setattr(kvstack.zoo, "load_model", no_weights)
    long = model_dir / "long.txt"
    long.write_text("the quick brown fox " * 3000)  # far beyond the tiny model's 2048 positions
    assert main(["run", "--model", str(model_dir), "--context-file", str(long), "--quiet"]) == 2
    assert "handles at most 2048" in capsys.readouterr().err
    empty = model_dir / "empty.txt"
    empty.write_text("  \n")
    assert main(["run", "--model", str(model_dir), "--context-file", str(empty), "--quiet"]) == 2
    assert "context is empty" in capsys.readouterr().err


def test_a_recipe_error_comes_before_the_full_cache_answer(model_dir, capsys, monkeypatch):
    import kvstack

    calls = []
    real = kvstack.compress

    def spy(model, ids, recipe, **kwargs):
        if len(ids) > 8:  # not the untimed 8-token warm-up
            calls.append(getattr(recipe, "text", recipe))
        return real(model, ids, recipe, **kwargs)

    monkeypatch.setattr(kvstack, "compress", spy)
    # 60 sink tokens cannot fit in 10% of the context: a BudgetError only the context length reveals
    code = main(["run", "--model", str(model_dir), "--context-file", str(model_dir / "context.txt"),
                 "--recipe", "snapkv:0.1,sink=60", "--quiet"])
    assert code == 2 and "must always be kept" in capsys.readouterr().err
    assert calls == ["snapkv:0.1,sink=60"]  # the identity baseline never ran


@pytest.mark.parametrize(
    "argv, phrase",
    [
        (["run", "--recipe", "nosuch"], "unknown stage"),
        (["run", "--context-file", "/nonexistent.txt"], "does not exist"),
        (["run", "--model", "/nonexistent-model-dir"], "neither a bundled name"),
    ],
)
def test_run_errors_exit_2_with_a_message(argv, phrase, capsys):
    assert main(argv) == 2
    assert phrase in capsys.readouterr().err


def test_model_dir_without_config_is_explained(tmp_path, capsys):
    assert main(["run", "--model", str(tmp_path), "--context-file", __file__]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_recipes_lists_every_stage_with_parameters(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    for name in ("identity", "streaming", "int8", "fp16"):
        assert re.search(rf"^{name}\s", out, re.M)
    assert "window=512" in out


def test_help_documents_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("run", "recipes"):
        assert cmd in out


def test_parser_builds_without_importing_torch():
    import subprocess
    import sys

    code = "import sys, kvstack.cli; kvstack.cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"  # `kvstack plan` and `--help` stay fast
