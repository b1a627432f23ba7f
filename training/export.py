"""Turn a training run's weight shards into the shipped Hugging Face directory.

Writes ``config.json`` (a ``LlamaConfig`` built by the installed transformers, so the version that
loads it also wrote it), ``generation_config.json`` and one fp16 ``model.safetensors`` next to the
tokenizer files. ``config.json`` asks for float32 on load: the weights are stored in fp16 to fit the
size cap, but CPU inference in fp16 is slow and loses precision.

Run: ``python -m training.export --run .kvstack/train/run1``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from kvstack.errors import InputError
from training import SHIPPED_DIR
from training.model import LlamaShape


def merged_state(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    shards = sorted(run.glob("weights-*.safetensors"))
    if not shards:
        raise InputError(f"no weights-*.safetensors in {run}: pass the folder a training run wrote")
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(load_file(str(shard)))
    return {k: v.to(torch.float16).contiguous() for k, v in state.items()}


def export(run: Path, out: Path) -> dict:
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    summary = json.loads((run / "train_summary.json").read_text())
    shape = LlamaShape(**summary["shape"])
    tokenizer = json.loads((out / "tokenizer_config.json").read_text())
    vocab = json.loads((out / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in vocab["added_tokens"]}
    eot, pad = ids[tokenizer["eos_token"]], ids[tokenizer["pad_token"]]
    config = shape.hf_config(bos_token_id=eot, eos_token_id=eot, pad_token_id=pad, dtype="float32",
                             architectures=["LlamaForCausalLM"])
    config.save_pretrained(str(out))
    GenerationConfig(bos_token_id=eot, eos_token_id=eot, pad_token_id=pad, do_sample=False,
                     max_new_tokens=32).save_pretrained(str(out))
    state = merged_state(run)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "model.safetensors").chmod(0o644)  # safetensors creates it owner-only; it ships to everyone
    (out / "training_summary.json").write_text(json.dumps({k: v for k, v in summary.items() if k != "log"}, indent=1))
    return {"tensors": len(state), "parameters": sum(t.numel() for t in state.values())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="folder with weights-*.safetensors and train_summary.json")
    ap.add_argument("--out", type=Path, default=SHIPPED_DIR)
    args = ap.parse_args(argv)
    print(json.dumps(export(args.run, args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
