"""How much H2O's kept set changes when cumulative attention is scored from every k-th query.

    nice .venv/bin/python benchmarks/h2o_stride.py [--lengths 4096 8192] [--offsets 0 30000]

On the bundled retrieval model and real text (the Paul Graham essays, windows starting at
``--offsets`` tokens), one prefill per window captures the exact sums (``stride=1``) and the
strided estimates (exact band of ``BAND`` queries after each key, every k-th query beyond);
each ``h2o:F,stride=k`` then keeps its rows. Agreement with the exact kept
set, per (layer, KV head), as the share of the exact set also kept (the sets have the same
size, so this is recall = precision = overlap at the budget): over the whole kept set, and
over the heavy hitters alone (the rows chosen by score, without the forced recent tokens).
"""

from __future__ import annotations

import argparse
import statistics

import torch

from kvstack.api import compress_many
from kvstack.cli import table
from kvstack.eval.texts import essay, essay_names
from kvstack.stack import Recipe
from kvstack.zoo import load

STRIDES = (1, 2, 4, 8, 16, 32)


def kept_sets(cache) -> list[list[set[int]]]:
    """Per layer, per head: the positions kept."""
    out = []
    for layer in cache.layers:
        pos, offsets = layer.row_positions().tolist(), layer.head_offsets()
        out.append([set(pos[o : o + n]) for o, n in zip(offsets, layer.lengths, strict=True)])
    return out


def agreement(exact: list[list[set[int]]], other: list[list[set[int]]], forced: int, length: int) -> tuple:
    """(min over heads, mean) of the overlap on the whole kept set and on the heavy hitters."""
    whole, heavy = [], []
    recent = set(range(length - forced, length))
    for a_layer, b_layer in zip(exact, other, strict=True):
        for a, b in zip(a_layer, b_layer, strict=True):
            whole.append(len(a & b) / len(a))
            ha, hb = a - recent, b - recent
            heavy.append(len(ha & hb) / max(len(ha), 1))
    return min(whole), statistics.mean(whole), min(heavy), statistics.mean(heavy)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="*", default=[4096, 8192])
    ap.add_argument("--offsets", type=int, nargs="*", default=[0, 30000])
    ap.add_argument("--fractions", type=float, nargs="*", default=[0.25, 0.125])
    ap.add_argument("--strides", type=int, nargs="*", default=list(STRIDES))
    args = ap.parse_args()
    model, tok = load("kvstack-retrieval")
    ids = tok(" ".join(essay(n) for n in essay_names()), add_special_tokens=False, return_tensors="pt").input_ids[0]
    rows = []
    for length in args.lengths:
        for offset in args.offsets:
            ctx = ids[offset : offset + length]
            recipes = [Recipe.parse(f"h2o:{f},stride={k}") for f in args.fractions for k in args.strides]
            caches = {r.text: kept_sets(c) for r, c in compress_many(model, ctx, recipes)}
            for f in args.fractions:
                exact = caches[f"h2o:{f},stride=1"]
                forced = len(exact[0][0]) - len(exact[0][0]) // 2  # recent=0.5 of the budget, rounded half up
                for k in args.strides[1:]:
                    lo, mean, hlo, hmean = agreement(exact, caches[f"h2o:{f},stride={k}"], forced, length)
                    rows.append([length, offset, f, k, f"{100 * mean:.1f}%", f"{100 * lo:.1f}%",
                                 f"{100 * hmean:.1f}%", f"{100 * hlo:.1f}%"])
                    print(rows[-1], flush=True)
    print(f"\nkvstack-retrieval, torch {torch.__version__}")
    print(table(rows, ("tokens", "offset", "fraction", "stride", "kept set same (mean)", "(worst head)",
                       "heavy hitters same (mean)", "(worst head)")))


if __name__ == "__main__":
    main()
