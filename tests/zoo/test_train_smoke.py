"""A few CPU steps of the real training script on a toy model: the loss falls, and the export loads in transformers."""

from __future__ import annotations

import json
import lzma
import shutil

import pytest
import torch

from kvstack.zoo import SHIPPED


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from kvstack.errors import ModelNotInstalledError
    from training.train import main

    try:
        from kvstack.eval.texts import essay, essay_names
    except ModelNotInstalledError as exc:  # pragma: no cover - make installs it
        pytest.skip(str(exc))
    root = tmp_path_factory.mktemp("train")
    names = essay_names()
    for split, picked in (("train", names[:12]), ("heldout", names[12:14])):
        with lzma.open(root / f"{split}.jsonl.xz", "wt") as f:
            for n in picked:
                f.write(json.dumps({"source": "essay", "name": n, "kind": "prose", "text": essay(n).strip()}) + "\n")
    out = root / "run"
    assert main(["--data", str(root), "--out", str(out), "--shape", "tiny", "--phases", "128:14", "--device", "cpu",
                 "--tokens-per-step", "1024", "--lr", "3e-3", "--warmup", "2", "--log-every", "1", "--no-eval",
                 "--workers", "0"]) == 0
    return out


@pytest.mark.slow
def test_loss_falls_over_a_few_steps(run):
    log = json.loads((run / "train_summary.json").read_text())["log"]
    lm = [r["lm_loss"] for r in log]
    assert len(lm) == 14
    assert sum(lm[-3:]) / 3 < sum(lm[:3]) / 3 - 0.3  # from ln(8192) ~ 9.0 toward text statistics


@pytest.mark.slow
def test_export_loads_in_transformers_with_the_trained_logits(run, tmp_path):
    from transformers import LlamaForCausalLM

    from training.export import export, merged_state
    from training.model import LlamaShape, TrainLlama

    out = tmp_path / "hf"
    out.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(SHIPPED / "kvstack-retrieval" / name, out / name)
    export(run, out)
    hf = LlamaForCausalLM.from_pretrained(str(out)).eval()
    shape = LlamaShape(**json.loads((run / "train_summary.json").read_text())["shape"])
    ours = TrainLlama(shape)
    ours.load_state_dict({k: v.float() for k, v in merged_state(run).items()}, strict=False)
    ids = torch.randint(0, shape.vocab_size, (1, 50), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, ours.logits(ours(ids)), atol=1e-4, rtol=1e-4)
    assert hf.config.eos_token_id == 0 and hf.dtype == torch.float32


@pytest.mark.slow
def test_a_run_stopped_and_resumed_ends_with_the_weights_of_an_uninterrupted_run(run, tmp_path):
    """Long trainings span several device calls: the resumed run must see the same batches and optimizer."""
    from safetensors.torch import load_file

    from training.train import main

    data = run.parent
    common = ["--data", str(data), "--shape", "tiny", "--phases", "128:14", "--device", "cpu", "--tokens-per-step",
              "1024", "--lr", "3e-3", "--warmup", "2", "--no-eval", "--workers", "0"]
    out = tmp_path / "resumed"
    state = tmp_path / "state.pt"
    assert main([*common, "--out", str(out), "--checkpoint", str(state), "--stop-at-step", "5"]) == 0
    half = load_file(str(out / "weights-00.safetensors"))
    assert main([*common, "--out", str(out), "--checkpoint", str(state), "--resume"]) == 0
    whole, resumed = load_file(str(run / "weights-00.safetensors")), load_file(str(out / "weights-00.safetensors"))
    assert whole.keys() == resumed.keys()
    assert any(not torch.equal(half[k], whole[k]) for k in whole)  # the stop really happened mid-run
    for k in whole:
        torch.testing.assert_close(resumed[k].float(), whole[k].float(), atol=1e-3, rtol=0)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps_done"] == 14
    with pytest.raises(SystemExit, match="other --phases"):
        main([*common[:5], "128:15", *common[6:], "--out", str(out), "--checkpoint", str(state), "--resume"])
