"""How far below 8-bit quantization the whole stack goes on the wire, at what accuracy.

Issue 7's goal: the best stack at least 4x smaller than 8-bit quantization (CacheGen: 3.5-4.3x)
at the accuracy of the eval harness. On the bundled retrieval model, for contexts of the eval
harness's ``niah_single`` task, every recipe's cache is wire-encoded (default ``colzstd`` codes,
and ``ans``), decoded, and answered from; sizes are whole streams (header, scales, positions,
token ids included).

    python benchmarks/wire_stack.py                      # 4k tokens, 6 samples
    python benchmarks/wire_stack.py --samples 8 --recipes int8 int4 "snapkv:0.25 > int4"
"""

from __future__ import annotations

import argparse
import os
import time

import torch

RECIPES = ("int8", "int4", "int3", "int2", "kivi:2", "snapkv:0.25 > int4", "streaming > int4",
           "streaming:window=2044 > int4", "streaming:window=2044 > int2", "q2c:0.5 > int4")
CODINGS = (("raw", {"codes": "raw", "tensors": "raw"}), ("colzstd", {}), ("ans", {"codes": "ans"}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="kvstack-retrieval")
    ap.add_argument("--tokens", default="4k")
    ap.add_argument("--samples", type=int, default=6)
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES))
    args = ap.parse_args()
    torch.set_num_threads(1)

    import kvstack
    from kvstack import wire
    from kvstack.eval.prompt import format_sample
    from kvstack.eval.runner import load_model, parse_length
    from kvstack.eval.tasks import get_task
    from kvstack.linkbench.receiver import answer_contains
    from kvstack.stack import Recipe

    model, tok = load_model(args.model)
    task = get_task("niah_single")
    samples = task.samples(tok, parse_length(args.tokens), args.samples, 0)
    recipes = ["identity", *[r for r in args.recipes if r != "identity"]]
    sizes: dict[tuple[str, str], list[int]] = {}
    hits: dict[str, list[float]] = {r: [] for r in recipes}
    start = time.perf_counter()
    for i, sample in enumerate(samples):
        prompt = format_sample(tok, sample)
        # question-aware stages (q2c) see the question, as in the eval harness
        for name, (_, cache) in zip(recipes, kvstack.compress_many(
                model, prompt.context_ids, [Recipe.parse(r) for r in recipes], prompt.question_ids)):
            if isinstance(cache, Exception):
                raise cache
            for codes, opts in CODINGS:
                blob = wire.encode(cache, **opts)
                sizes.setdefault((name, codes), []).append(len(blob))
            back = wire.decode(blob)
            hits[name].append(answer_contains(model, tok, sample, prompt, name, back, task.max_new_tokens))
        print(f"sample {i + 1}/{len(samples)} done, {time.perf_counter() - start:.0f} s", flush=True)

    def mean(xs):
        return sum(xs) / len(xs)

    int8 = mean(sizes[("int8", "raw")]) if ("int8", "raw") in sizes else float("nan")
    print(f"\n{args.model}, niah_single, {len(samples)} samples of ~{args.tokens} tokens, load average "
          f"{os.getloadavg()[0]:.1f}. x = int8 packed (raw file) / this file.\n")
    print("| recipe | raw MB | colzstd MB | ans MB | x below int8 (colzstd) | x below int8 (ans) | niah_single |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in recipes:
        raw, col, ans = (mean(sizes[(r, c)]) for c in ("raw", "colzstd", "ans"))
        print(f"| {r} | {raw / 1e6:.3f} | {col / 1e6:.3f} | {ans / 1e6:.3f} | {int8 / col:.2f} | {int8 / ans:.2f} "
              f"| {mean(hits[r]):.2f} |")


if __name__ == "__main__":
    main()
