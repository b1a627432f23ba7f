"""Batched ``kvstack.generate`` against one call per sequence: wall time, equality, bytes.

``python benchmarks/batch_generate.py [--batch 1 4 8] [--recipe "snapkv:0.5 > int8"] [--new 16]``

B contexts of different lengths (slices of Paul Graham essays, SmolLM2-135M-Instruct, fp32) are
compressed into one :class:`~kvstack.kv_batch.KVBatch`; the script times one batched
``kvstack.generate`` and B one-sequence calls on the same caches (median of ``--repeat``), checks
each batched row equals its single call, and prints the bytes the batch holds (ragged) next to
what a padded batch of the same caches would hold. On a CPU the batched call runs the generic
decode path (the GPU kernels read one sequence); see docs/api.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

import kvstack


def _inputs(tok, b: int):
    from kvstack.eval.texts import essay, essay_names
    from kvstack.prompting import split_prompt

    names = essay_names()
    pairs = [split_prompt(tok, essay(names[i % len(names)])[: 600 + 250 * (i % 4)], "What is this about?")
             for i in range(b)]
    return [c for c, _ in pairs], [q for _, q in pairs]


def _median_seconds(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _row(model, tok, b: int, args) -> str:
    """One table row: B sequences, batched against one call each."""
    ctxs, qs = _inputs(tok, b)
    batch = kvstack.compress(model, ctxs, args.recipe)

    def batched():
        return kvstack.generate(model, batch, qs, max_new_tokens=args.new)

    def singles():
        return [kvstack.generate(model, batch[i], qs[i], max_new_tokens=args.new) for i in range(b)]

    equal = sum(torch.equal(x, y) for x, y in zip(batched(), singles(), strict=True))  # also warms up
    t_batch, t_single = _median_seconds(batched, args.repeat), _median_seconds(singles, args.repeat)
    padded = b * max(c.nbytes for c in batch)  # every sequence stored at the largest one's size
    lengths = "/".join(str(n) for n in batch.context_lengths)
    return (f"| {b} | {lengths} | {t_batch:.2f} | {t_single:.2f} | {t_single / t_batch:.2f}x | {equal}/{b} | "
            f"{batch.nbytes} | {padded} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--recipe", default="snapkv:0.5 > int8")
    parser.add_argument("--new", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from kvstack.zoo import load

    model, tok = load("smollm2-135m")
    _row(model, tok, 2, argparse.Namespace(**{**vars(args), "repeat": 2}))  # warm-up (the first calls are slow)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, recipe {args.recipe!r}, {args.new} new tokens, greedy fp32")
    print("| B | context tokens | batched s | B single calls s | speedup | rows equal | batch bytes | padded bytes |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for b in args.batch:
        print(_row(model, tok, b, args))

if __name__ == "__main__":
    main()
