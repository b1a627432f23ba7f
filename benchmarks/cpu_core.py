"""CPU cost of kvstack's core path on the real SmolLM2-135M: prefill, compression, and
decode speed through the compressed cache vs. transformers' plain DynamicCache.

    .venv/bin/python benchmarks/cpu_core.py [--context 2048] [--steps 32] [--repeats 3]

Prints a table (medians over repeats); paste it into benchmarks/RESULTS.md with the date.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import transformers
from transformers import DynamicCache

import kvstack
from kvstack.cli import table
from kvstack.eval.texts import essay, essay_names
from kvstack.hf.compat import cache_kwargs
from kvstack.zoo import load

RECIPES = ["identity", "int8", "streaming:sink=4,window=512", "streaming:sink=4,window=512 > int8"]


def context_ids(tok, n: int) -> torch.Tensor:
    text, ids = "", None
    for name in essay_names():
        text += essay(name)
        ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
        if ids.numel() >= n:
            break
    return ids[:n]


@torch.no_grad()
def plain_decode(model, ctx: torch.Tensor, steps: int) -> tuple[float, float]:
    """Prefill + greedy decode with a DynamicCache; returns (prefill s, decode tok/s)."""
    t = time.perf_counter()
    dc = DynamicCache()
    out = model(input_ids=ctx[None], **cache_kwargs(dc), use_cache=True, logits_to_keep=1)
    prefill = time.perf_counter() - t
    tok = out.logits[:, -1:].argmax(-1)
    t = time.perf_counter()
    for _ in range(steps):
        out = model(input_ids=tok, **cache_kwargs(dc), use_cache=True)
        tok = out.logits[:, -1:].argmax(-1)
    return prefill, steps / (time.perf_counter() - t)


@torch.no_grad()
def kvstack_decode(model, ctx: torch.Tensor, recipe: str, steps: int):
    cache = kvstack.compress(model, ctx[:-1], recipe)
    hf = kvstack.hf.CompressedCache(cache, model.dtype)
    tok = ctx[-1:][None]
    t = time.perf_counter()
    with kvstack.hf.enable(model):
        for _ in range(steps):
            out = model(input_ids=tok, **cache_kwargs(hf), use_cache=True)
            tok = out.logits[:, -1:].argmax(-1)
    return cache, steps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    model, tok = load("smollm2-135m")
    ctx = context_ids(tok, args.context)
    plain = [plain_decode(model, ctx, args.steps) for _ in range(args.repeats)]
    rows = [(
        "DynamicCache (transformers)", str(ctx.numel()), "-", "1.00x",
        f"{statistics.median(p for p, _ in plain):.2f}", "-", f"{statistics.median(r for _, r in plain):.1f}",
    )]
    for recipe in RECIPES:
        runs = [kvstack_decode(model, ctx, recipe, args.steps) for _ in range(args.repeats)]
        cache = runs[0][0]
        rows.append((
            recipe, str(ctx.numel()), f"{cache.nbytes / 2**20:.2f} MiB", f"{cache.ratio:.2f}x",
            f"{statistics.median(c.stats['prefill_seconds'] for c, _ in runs):.2f}",
            f"{statistics.median(c.stats['compress_seconds'] for c, _ in runs):.3f}",
            f"{statistics.median(r for _, r in runs):.1f}",
        ))
    print(f"SmolLM2-135M-Instruct fp32, CPU {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"context {ctx.numel()} tokens, {args.steps} decode steps, median of {args.repeats}")
    print(table(rows, ("cache", "context", "cache bytes", "ratio", "prefill s", "compress s", "decode tok/s")))


if __name__ == "__main__":
    main()
