"""What scoring costs: selection overhead as a fraction of prefill, at 8k tokens, on the CPU.

    .venv/bin/python benchmarks/select_overhead.py [--tokens 8192] [--repeats 2]

For each selection method, on the bundled retrieval model (8k context): the time the
prefill spends in kvstack's capture hook (window queries, question queries, attention
received per key - scored in chunks, never T x T), timed directly around the hook, plus
the compression step, against the rest of the prefill. Timing the hook itself rather than
subtracting two prefills keeps the answer out of the noise of a shared machine (two plain
8k prefills here differ by 20%). The issue's target: at most 10%.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

import kvstack
from kvstack.cli import table
from kvstack.eval.texts import essay, essay_names
from kvstack.hf.attention import CaptureSession
from kvstack.zoo import load

RECIPES = ["snapkv:0.25", "q2c:0.25", "h2o:0.25", "tova:0.25", "expected:0.25", "keydiff:0.25",
           "knorm:0.25"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--recipes", nargs="*", default=RECIPES)
    args = ap.parse_args()
    torch.manual_seed(0)
    model, tok = load("kvstack-retrieval")
    text = " ".join(essay(n) for n in essay_names())
    ctx = tok(text, add_special_tokens=False, return_tensors="pt").input_ids[0][: args.tokens]
    question = tok(" What is the main point of the essay?", add_special_tokens=False, return_tensors="pt").input_ids[0]
    hook_seconds = [0.0]
    observe = CaptureSession.observe

    def timed_observe(self, *a, **k):
        t = time.perf_counter()
        try:
            return observe(self, *a, **k)
        finally:
            hook_seconds[0] += time.perf_counter() - t

    CaptureSession.observe = timed_observe
    rows = []
    for recipe in args.recipes:
        prefill, hook, comp = [], [], []
        for _ in range(args.repeats):
            hook_seconds[0] = 0.0
            kv = kvstack.compress(model, ctx, recipe, question_ids=question, chunk_size=1024)
            prefill.append(kv.stats["prefill_seconds"])
            hook.append(hook_seconds[0])
            comp.append(kv.stats["compress_seconds"])
        p, h, s = statistics.median(prefill), statistics.median(hook), statistics.median(comp)
        rows.append([recipe, f"{p - h:.2f}", f"{h:.2f}", f"{s:.2f}", f"{100 * (h + s) / (p - h):.1f}%"])
        print(rows[-1], flush=True)
    print(f"\nkvstack-retrieval, {ctx.numel()} tokens, torch {torch.__version__}, {platform.processor() or 'cpu'}, "
          f"threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}")
    print(table(rows, ("recipe", "prefill s (without hook)", "capture hook s", "compress s", "overhead")))


if __name__ == "__main__":
    main()
