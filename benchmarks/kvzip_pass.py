"""What KVzip's reconstruction pass costs next to the prefill it follows, with and without the fused path.

On a CPU SDPA model the pass attends through the same flash kernel the model's SDPA calls and scores every
context row from that kernel's log-sum-exps (one product and a max per layer); the other path (GPUs,
softcapping, eager models) runs a softmax over every reconstruction query in PyTorch. Both give the same
scores (to float32 rounding: the largest difference is printed). One table row per path:

    python benchmarks/kvzip_pass.py --model smollm2-135m --tokens 2048 --threads 1
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
import transformers

import kvstack
from kvstack.eval.runner import load_model
from kvstack.hf.captures import reconstruction
from kvstack.hf.model import model_info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model, args.dtype)
    text = " ".join(f"Entry {i}: the code for item {i * 7919 % 10007} is {i * 104729 % 99991}." for i in range(4000))
    ids = torch.tensor(tok(text)["input_ids"][: args.tokens])
    start = time.perf_counter()
    cache = kvstack.compress(model, ids, "identity")
    prefill = time.perf_counter() - start
    info, scores, seconds = model_info(model), {}, {}
    fused = reconstruction._fused
    for name, gate in (("fused (flash kernel + log-sum-exps)", fused), ("softmax in PyTorch", lambda *a: False)):
        reconstruction._fused = gate
        start = time.perf_counter()
        scores[name] = reconstruction.reconstruction_scores(model, info, cache)
        seconds[name] = time.perf_counter() - start
    reconstruction._fused = fused
    a, b = scores.values()
    diff = max((a[layer] - b[layer]).abs().max().item() for layer in a)
    print(f"{args.model} {args.dtype}, {ids.numel()} tokens, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, transformers {transformers.__version__}, {args.threads} thread(s)")
    print("| pass | seconds | x prefill |\n| --- | --- | --- |")
    print(f"| prefill | {prefill:.1f} | 1.0 |")
    for name, s in seconds.items():
        print(f"| KVzip reconstruction, {name} | {s:.1f} | {s / prefill:.1f} |")
    print(f"largest score difference between the two: {diff:.1e}")


if __name__ == "__main__":
    main()
