"""Held-out cells of several retrieval-model weight sets on identical samples and perplexity windows.

Why: the training script scores each run with its own seed, so its samples and perplexity windows differ
between runs (run 6's perplexity at 8k read 7.46 against run 4's 5.52 only because its windows differ). This
script measures every run on the same ones (CPU, float32, greedy exact match of the first answer in one
teacher-forced pass, ``training.evaluate``). Needs the held-out corpus file (``--data``), which
``python -m training.corpus`` builds.

    nice python -m training.retrieval_heldout --run r4=.kvstack/runs/r4 --run r6=kvstack/zoo/kvstack-retrieval \\
        --cells single@4096x40 multikey@4096x40 lookalike@4096x40 --ppl 1024x48 8192x8 --seed 999
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from kvstack.errors import InputError


def parse_cell(text: str) -> tuple[str, int, int]:
    """``task@length x n`` -> (task, length, n); ``ppl`` cells are ``length x n``."""
    task, _, rest = text.rpartition("@")
    try:
        length, n = (int(x) for x in rest.split("x"))
    except ValueError:
        raise InputError(f"cell {text!r} is not task@LENGTHxN (e.g. single@4096x40) or LENGTHxN for --ppl") from None
    return task, length, n


def load_run(folder: Path):
    """A training run's shards (weights-*.safetensors) or an exported model.safetensors, as the training model."""
    from safetensors.torch import load_file

    from training.model import TrainLlama
    from training.train import SHAPES

    files = sorted(folder.glob("weights-*.safetensors")) or sorted(folder.glob("model.safetensors"))
    if not files:
        raise InputError(f"no weights-*.safetensors or model.safetensors in {folder}")
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    model = TrainLlama(SHAPES["shipped"])
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", required=True, help="NAME=FOLDER, repeatable")
    ap.add_argument("--cells", nargs="*", default=[], help="task@LENGTHxN held-out retrieval cells")
    ap.add_argument("--ppl", nargs="*", default=[], help="LENGTHxN perplexity windows")
    ap.add_argument("--seed", type=int, default=999)
    ap.add_argument("--data", type=Path, default=Path(".kvstack/traindata/heldout.jsonl.xz"))
    args = ap.parse_args(argv)
    runs = [r.split("=", 1) for r in args.run]
    if any(len(r) != 2 for r in runs):
        raise InputError("--run takes NAME=FOLDER, e.g. --run r6=kvstack/zoo/kvstack-retrieval")
    cells = [parse_cell(c) for c in args.cells] + [("ppl", *parse_cell(c)[1:]) for c in args.ppl]
    if not args.data.exists():
        raise InputError(f"{args.data} is missing: build it with `python -m training.corpus`")

    from tokenizers import Tokenizer

    from kvstack.zoo import SHIPPED
    from training.data import build_streams
    from training.evaluate import perplexity, retrieval_accuracy
    from training.retrieval import SampleMaker, VocabTables

    torch.set_num_threads(1)
    vocab = VocabTables(Tokenizer.from_file(str(SHIPPED / "kvstack-retrieval" / "tokenizer.json")))
    heldout = build_streams(vocab, args.data, None)
    maker = SampleMaker(vocab, heldout.text, heldout.code)
    table: dict[str, dict[str, str]] = {}
    for name, folder in runs:
        model = load_run(Path(folder))
        for task, length, n in cells:
            t0 = time.time()
            batch = 2 if length > 4096 else 8  # logits of 8 x 8k rows would be 2 GB
            if task == "ppl":
                value = f"{perplexity(model, heldout.lm, length, n, args.seed, 'cpu', batch)['ppl']:.3f}"
            else:
                acc = retrieval_accuracy(model, maker, task, length, n, "heldout", args.seed, "cpu", batch)
                value = f"{acc:.0%}"
            table.setdefault(f"{task}@{length} n={n}", {})[name] = value
            print(f"{name} {task}@{length} n={n}: {value} ({time.time() - t0:.0f} s)", flush=True)
    names = [n for n, _ in runs]
    print(f"\n| cell (seed {args.seed}) | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for cell, row in table.items():
        print(f"| {cell} | " + " | ".join(row.get(n, "-") for n in names) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
