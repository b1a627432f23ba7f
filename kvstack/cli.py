"""The ``kvstack`` command line: run, recipes, plan, eval, report, diagnose, inspect, serve, push, pull."""

from __future__ import annotations

import argparse
import os
import sys

from kvstack.cli_text import DEFAULT_MODEL, table  # noqa: F401  (table: benchmarks import it from here)
from kvstack.errors import KvstackError

DEFAULT_ESSAY = "foundervisa"
DEFAULT_QUESTION = "How many startup founders a year does the author propose to let into the country?"
DEFAULT_RECIPE = "streaming:sink=4,window=384 > int8"


def _cmd_run(args: argparse.Namespace) -> int:
    from kvstack.run_cli import cmd_run

    return cmd_run(args)


def cmd_recipes(args: argparse.Namespace) -> int:
    from kvstack.stack import describe_stages

    rows = describe_stages()
    print(table([(n, f, s) for n, f, s, _ in rows], ("stage", "family", "what it does")))
    print("\nparameters (positional first, then key=value):")
    for name, _, _, params in rows:
        print(f"  {name}: {params}")
    from kvstack.presets import MEASURED_ON, describe_presets

    print(f"\npresets (a whole recipe by name; chosen on {MEASURED_ON}: those numbers are in the real-model "
          "column, the rest in benchmarks/RESULTS.md; question-agnostic best: presets keep most single needles but "
          "lose multi-key answers to key confusion, and do worse on Gemma-3 - measure on yours with kvstack eval):")
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
    run.set_defaults(func=_cmd_run)

    rec = sub.add_parser("recipes", help="list every stage with its parameters", description="List every stage.")
    rec.set_defaults(func=cmd_recipes)

    from kvstack.diagnose.cli import register as register_diagnose
    from kvstack.eval.cli import register as register_eval
    from kvstack.inspect.cli import register as register_inspect
    from kvstack.linkbench.cli import register as register_bench
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
    except BrokenPipeError:  # `kvstack recipes | head`: the reader left; stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 0


if __name__ == "__main__":
    sys.exit(main())
