"""Why every attention-scored eviction scored 0/8 on the retrieval model's needle task at 50% kept.

    .venv/bin/python benchmarks/select_needle.py [--samples 8] [--threads 1]

On niah_single at 4k: (1) ``snapkv:1.0`` must equal the full cache exactly (same code path,
nothing evicted); (2) scattered per-head eviction at random (``random:0.9/0.75/0.5``) tests the
ragged-cache mechanics - positions, RoPE, masks - on their own; (3) the same methods with the
needle's tokens forced into every head (the method's scores otherwise untouched) show whether
losing the needle is the whole story. Prints accuracy, gold-answer NLL and the share of
(layer, head) slots that still hold every needle token.
"""

from __future__ import annotations

import argparse

import torch

import kvstack
from kvstack.api import compress_many
from kvstack.eval.metrics import score
from kvstack.eval.nll import continuation_nll
from kvstack.eval.prompt import format_sample
from kvstack.eval.tasks import get_task
from kvstack.stack import Recipe
from kvstack.stages.select.base import ScoredSelect
from kvstack.zoo import load

PLAIN = ["identity", "snapkv:1.0", "snapkv:0.9", "snapkv:0.75", "snapkv:0.5", "streaming:sink=4,window=3682",
         "random:0.9", "random:0.75", "random:0.5", "q2c:0.9", "q2c:0.5", "expected:0.5", "kvzip:0.5"]
PROTECTED = ["snapkv:0.9", "snapkv:0.5", "q2c:0.5", "expected:0.5"]


def needle_positions(tok, prompt, sample) -> list[int]:
    """The context positions of "'<key>' reads <number>." (the needle's key and value)."""
    ids = prompt.context_ids.tolist()
    value = tok(sample.answers[0], add_special_tokens=False).input_ids
    for cut in (0, 1):  # the number may merge with the space before it
        v = value[cut:]
        hits = [i for i in range(len(ids) - len(v) + 1) if ids[i : i + len(v)] == v]
        if hits:
            return list(range(hits[0] - 12, hits[0] + len(v) + 1))
    raise RuntimeError("needle not found in the context")


def protect(recipe: Recipe, positions: list[int]) -> Recipe:
    """Force ``positions`` into every head's kept rows of the recipe's score-and-keep stages."""
    pos = torch.tensor(positions)
    for stage in recipe.stages:
        if isinstance(stage, ScoredSelect):
            base = type(stage).must_keep

            def must_keep(rows, requests, total, stage=stage, base=base):
                mine = torch.isin(rows.pos, pos)
                other = base(stage, rows, requests, total)
                return mine if other is None else other | mine

            stage.must_keep = must_keep
    recipe.text += " +needle"
    return recipe


def coverage(cache, positions: list[int]) -> float:
    slots = held = 0
    need = set(positions)
    for layer in cache.layers:
        pos = layer.row_positions().tolist()
        for off, n in zip(layer.head_offsets(), layer.lengths, strict=True):
            slots += 1
            held += need <= set(pos[off : off + n])
    return held / slots


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load("kvstack-retrieval")
    rows: dict[str, list[tuple[float, float, float]]] = {}
    for sample in get_task("niah_single").samples(tok, 4096, args.samples, 0):
        prompt = format_sample(tok, sample)
        needle = needle_positions(tok, prompt, sample)
        recipes = [Recipe.parse(r) for r in PLAIN] + [protect(Recipe.parse(r), needle) for r in PROTECTED]
        full_keys = None
        for recipe, cache in compress_many(model, prompt.context_ids, recipes, prompt.question_ids):
            out = tok.decode(kvstack.generate(model, cache, prompt.question_ids, 16), skip_special_tokens=True)
            nll, n = continuation_nll(model, cache, prompt.answer_ids, prompt.question_ids)
            if recipe.text == "identity":
                full_keys = [layer.keys.decode() for layer in cache.layers]
            if recipe.text == "snapkv:1.0":  # nothing evicted: the very same rows
                assert all(torch.equal(a, b.keys.decode()) for a, b in zip(full_keys, cache.layers, strict=True))
            rows.setdefault(recipe.text, []).append((score(out, sample.answers, sample.mode)[1], nll / n,
                                                     coverage(cache, needle)))
            print(f"sample {sample.index} {recipe.text:30s} {out.strip()[:20]!r}", flush=True)
    print("\n| recipe | contains | answer NLL | slots holding the whole needle | n |\n|---|---|---|---|---|")
    for text, rs in rows.items():
        acc, nll, cov = (sum(r[i] for r in rs) / len(rs) for i in range(3))
        print(f"| `{text}` | {acc:.2f} | {nll:.3f} | {cov:.0%} | {len(rs)} |")


if __name__ == "__main__":
    main()
