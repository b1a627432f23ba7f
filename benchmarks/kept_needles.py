"""Which parts of the asked needle does a selection keep? (issue 17: why question-agnostic presets lose multi-key)

For each sample, compress the context with ``--recipe`` and report, for the needle the question
asks about, the share of its key's tokens and of its value's tokens that the cache still holds
(the first full-attention layer's kept positions: `surprisal` keeps the same positions in every layer and
head). A
value kept without its key is what makes a model answer with another needle's value.

    python benchmarks/kept_needles.py --recipe best:16x --task ruler_niah_multikey_1 --seed 4 --indices 0 3 7
"""

from __future__ import annotations

import argparse

import torch
from surprisal_ranks import answer_tokens, token_text  # benchmarks/ is the script's own folder

import kvstack
from kvstack.eval.prompt import format_sample
from kvstack.eval.tasks import get_task
from kvstack.zoo import load


def kept_positions(cache) -> set[int]:
    """Context positions the first full-attention layer of ``cache`` still holds (any head): a sliding-window
    layer (Gemma 3's local layers) holds only the window whatever the recipe keeps."""
    layer = next((lay for lay in cache.layers if lay.sliding_window is None), cache.layers[0])
    pos = layer.positions if layer.positions is not None else torch.arange(cache.context_length)
    return set(pos.view(-1).tolist())


def share(span: range | None, kept: set[int]) -> str:
    """``kept of total`` positions of ``span`` (``-`` when the text was not found)."""
    return "-" if span is None else f"{sum(p in kept for p in span)}/{len(span)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", required=True)
    ap.add_argument("--task", default="ruler_niah_multikey_1")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--indices", type=int, nargs="+", required=True)
    ap.add_argument("--model", default="smollm2-135m")
    args = ap.parse_args()
    model, tok = load(args.model)
    model = model.to(torch.bfloat16)
    samples = get_task(args.task).samples(tok, args.tokens, max(args.indices) + 1, seed=args.seed)
    print("| index | key | key tokens kept | value tokens kept |\n| --- | --- | --- | --- |")
    for i in args.indices:
        sample = samples[i]
        prompt = format_sample(tok, sample)
        ids = prompt.context_ids
        key = sample.meta["keys"][0] if sample.meta.get("keys") else ""
        text, ends = token_text(tok, ids)
        key_span = answer_tokens(text, ends, key) if key else None
        after_key = ends[key_span.stop - 1] if key_span else 0  # the value that follows this key
        value_span = answer_tokens(text, ends, sample.answers[0], after_key)
        cache = kvstack.compress(model, ids, args.recipe, question_ids=prompt.question_ids)
        kept = kept_positions(cache)
        print(f"| {i} | {key} | {share(key_span, kept)} | {share(value_span, kept)} |", flush=True)


if __name__ == "__main__":
    main()
