"""``kvstack eval`` and ``kvstack report``: wired into kvstack's CLI through :func:`register`."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

EVAL_EXAMPLES = """examples:
  kvstack eval --recipes identity int8 snapkv:0.25 "q2c:0.25 > int4" --tasks qa ppl --lengths 1k 2k \\
      --samples 20 --out results.jsonl
  kvstack eval --model ./my-hf-model --recipes identity kvpress:SnapKVPress:0.5 --tasks niah_single \\
      --lengths 4k --samples 10 --out peers.jsonl        # kvpress recipes need `make peers`
  kvstack eval --model ./Llama-3.1-8B --device cuda --recipes identity "snapkv:0.25 > int4" \\
      --tasks niah_single --lengths 32k --samples 20 --out gpu.jsonl
  kvstack report results.jsonl --out report/
  kvstack eval --model /shared/Llama-3.1-8B --executor ray --address auto --device cuda --dtype bfloat16 \\
      --recipes identity int4 --suite ruler --lengths 32k --samples 40 --out ray.jsonl   # one GPU per worker

  kvstack eval --model smollm2-135m --suite ruler --lengths 4k 8k --recipes identity int4 --samples 40 \\
      --device cuda --dtype bfloat16 --out ruler.jsonl      # RULER's synthetic tasks (docs/eval.md)

Rerunning the same command resumes: finished cells are skipped, a truncated last line is
redone. Tasks: niah_single niah_multikey niah_multivalue niah_multiquery passkey vartrack cwe
qa multihop multihop_num ppl ppl_kjv, and RULER's ruler_niah_single_1..3
ruler_niah_multikey_1..3 ruler_niah_multivalue ruler_niah_multiquery ruler_vt ruler_cwe ruler_fwe
ruler_qa_1 (--suite ruler). Recipes: any kvstack recipe (`kvstack recipes`), or
kvpress:<PressClass>[:compression_ratio][,key=value] (compression_ratio = share removed;
keep=0.25 means compression_ratio=0.75), or kvpress:none."""


def make_executor(name: str = "in-process", address: str | None = None, workers: int | None = None):
    """The executor ``--executor`` names; ``--address`` and ``--workers`` are for ``ray`` only (typed errors
    otherwise). Ray is imported here, so a missing Ray fails before anything loads."""
    from kvstack.errors import InputError

    if name == "ray":
        from kvstack.eval.ray_executor import RayExecutor

        return RayExecutor(address=address, workers=workers)
    for flag, value in (("--address", address), ("--workers", workers)):
        if value is not None:
            raise InputError(f"{flag} is for --executor ray; the in-process executor runs on this machine")
    from kvstack.eval.executors import InProcessExecutor

    return InProcessExecutor()


def cmd_eval(args: argparse.Namespace) -> int:
    from kvstack.eval.runner import EvalSpec, Runner, parse_length
    from kvstack.eval.tasks import suite_tasks

    tasks = list(args.tasks or ([] if args.suite else ["qa", "ppl"]))
    for name in args.suite or []:
        tasks += [t for t in suite_tasks(name) if t not in tasks]
    spec = EvalSpec(
        model=args.model, recipes=list(args.recipes), tasks=tasks,
        lengths=[parse_length(x) for x in args.lengths], samples=args.samples, seed=args.seed,
        max_new_tokens=args.max_new_tokens, chunk_size=args.chunk_size, threads=args.threads,
        device=args.device, dtype=args.dtype,
    )
    executor = make_executor(args.executor, args.address, args.workers)  # a missing Ray fails here, before any load
    runner = Runner(spec, args.out, progress=not args.quiet, log=lambda m: print(m, file=sys.stderr),
                    executor=executor)
    counts = runner.run()
    print(f"{counts['ran']} cells run, {counts['skipped']} skipped, {counts['errors']} errors, "
          f"{counts['done']} already done\n")
    from kvstack.eval.terminal import results_table

    print(results_table(args.out, spec.model, spec.tasks, spec.lengths, spec.recipes))
    print("\nscore: answers containing the expected string (ppl: perplexity); vs full: the score as a share of "
          "the full cache's (identity) on the same samples")
    print(f"results: {Path(args.out).resolve()} (one JSON line per cell, appended; rerunning resumes). "
          f"Markdown report and plots: kvstack report {args.out} --out report/")
    if args.report:
        from kvstack.eval.report import write_report

        print(f"report: {write_report(args.out, args.report)}")
    return 1 if counts["errors"] else 0


def cmd_report(args: argparse.Namespace) -> int:
    from kvstack.eval.report import write_report

    path = write_report(args.results, args.out, plots=not args.no_plots)
    print(Path(path).read_text(encoding="utf-8"))
    print(f"written: {path} (+ PNG plots beside it)" if not args.no_plots else f"written: {path}")
    return 0


def cmd_paired(args: argparse.Namespace) -> int:
    from kvstack.errors import InputError
    from kvstack.eval.paired import markdown, paired_stats, same_recipe_key
    from kvstack.eval.results import read_rows
    from kvstack.grammar.syntax import parse_recipe

    parse_recipe(args.against)  # a misspelt --against is a RecipeError naming the stages, before any file
    rows = [r for path in args.results for r in read_rows(path)[0]]
    wanted = {same_recipe_key(r) for r in args.recipes or ()}  # any spelling of a recipe selects it
    stats = [s for s in paired_stats(rows, args.against) if (not args.tasks or s.task in args.tasks)
             and (not wanted or same_recipe_key(s.recipe) in wanted)]
    if not stats:
        raise InputError(f"no recipe row in these files has a row of {args.against!r} for the same sample to pair "
                         f"with; run `kvstack eval` with {args.against!r} among the recipes")
    print(markdown(stats, args.against))
    return 0


def register(subparsers) -> None:
    """Add ``eval`` and ``report`` to kvstack's subcommands."""
    from kvstack.cli_text import DEFAULT_MODEL

    ev = subparsers.add_parser(
        "eval",
        help="score recipes on long-context tasks (accuracy, perplexity, bytes per token)",
        description=textwrap.fill(
            "Run a grid of recipes x tasks x context lengths x samples on a local model and append one JSON "
            "line per cell to --out: the answer and its exact/contains score (or the perplexity of a held-out "
            "continuation), cache bytes, bytes per token, compression ratio, prefill and compression time. "
            "Samples are seeded and decoding is greedy, so runs are deterministic; kvstack recipes share one "
            "prefill per sample. See docs/eval.md.",
            88,
        ),
        epilog=EVAL_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ev.add_argument("--model", default=DEFAULT_MODEL,
                    help=f"bundled model or local HF directory (default {DEFAULT_MODEL})")
    ev.add_argument("--recipes", nargs="+", default=["identity", "int8"], metavar="RECIPE",
                    help="recipes to compare; quote ones with spaces (default: identity int8)")
    ev.add_argument("--tasks", nargs="+", default=None, metavar="TASK",
                    help="tasks (default: qa ppl, or none when --suite is given)")
    ev.add_argument("--suite", nargs="+", choices=["ruler"], metavar="SUITE",
                    help="add a named task suite: ruler (RULER's 12 synthetic tasks in RULER's wording; lengths are "
                    "whole-sequence budgets as in RULER)")
    ev.add_argument("--lengths", nargs="+", default=["1k"], metavar="N",
                    help="context lengths in tokens: 512 1k 2k 8k (default: 1k)")
    ev.add_argument("--samples", type=int, default=20, help="samples per task and length (default 20)")
    ev.add_argument("--seed", type=int, default=0, help="seed of the generated samples (default 0)")
    ev.add_argument("--out", default="results.jsonl", help="results file, appended to (default results.jsonl)")
    ev.add_argument("--max-new-tokens", type=int, default=None, help="override each task's answer length")
    ev.add_argument("--chunk-size", type=int, default=1024, help="prefill chunk in tokens (default 1024)")
    ev.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's choice; 1 is fastest on a busy shared machine)")
    ev.add_argument("--device", default="cpu",
                    help="cpu, cuda or cuda:N: where the model runs and caches are compressed; on CUDA decoding "
                    "reads packed caches through the Triton kernels (default cpu)")
    ev.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                    help="load the model's weights in this dtype (default: as stored; bfloat16 halves memory and "
                    "is what ratios 'below bf16' assume)")
    ev.add_argument("--executor", choices=["in-process", "ray"], default="in-process",
                    help="where cells run: in-process (default) or ray (Ray workers, one per GPU with --device cuda; "
                    "pip install 'kvstack[ray]'; docs/eval.md)")
    ev.add_argument("--address", default=None,
                    help="Ray cluster to join (auto, HOST:6379 or ray://HOST:10001; default: $RAY_ADDRESS, else a "
                    "local Ray started for this run)")
    ev.add_argument("--workers", type=int, default=None,
                    help="Ray workers, each with its own model (default: one per GPU, or per --threads CPUs)")
    ev.add_argument("--report", metavar="DIR", help="also write the report (Markdown + plots) to DIR")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(func=cmd_eval)

    rep = subparsers.add_parser(
        "report",
        help="Markdown table and Pareto plots from `kvstack eval` results",
        description="Summarise a results file: per task and length, each recipe's accuracy (exact, contains), "
        "accuracy relative to the full cache (identity) and agreement with its answers, perplexity, bytes per "
        "token, compression ratio and timings; plus one PNG per task of accuracy vs bytes per token with the "
        "Pareto frontier of recipes.",
        epilog="example: kvstack report results.jsonl --out report/   (writes report/report.md and PNGs)",
    )
    rep.add_argument("results", help="a results file written by `kvstack eval`")
    rep.add_argument("--out", default="report", help="directory for report.md and the plots (default report/)")
    rep.add_argument("--no-plots", action="store_true", help="Markdown only (no matplotlib needed)")
    rep.set_defaults(func=cmd_report)

    pa = subparsers.add_parser(
        "paired",
        help="each recipe vs the full cache on the same samples, pooled over files and seeds (McNemar, 95%% CI)",
        description=textwrap.fill(
            "Pair every recipe row with the full cache's (identity) row of the same sample, pool over the given "
            "results files and their seeds, and print per task, length and recipe: answers lost and gained, the "
            "score relative to the full cache with a bootstrap 95% interval, the exact McNemar p-value and the "
            "mean change of the gold answer's NLL per token - whether a loss is real or noise."
        ),
        epilog="example: kvstack paired seed1.jsonl seed3.jsonl.xz --tasks ruler_niah_multikey_1 --recipes int4",
    )
    pa.add_argument("results", nargs="+", help="results files written by `kvstack eval` (.jsonl or .jsonl.xz)")
    pa.add_argument("--tasks", nargs="+", default=None, metavar="TASK", help="only these tasks")
    pa.add_argument("--recipes", nargs="+", default=None, metavar="RECIPE", help="only these recipes")
    pa.add_argument("--against", default="identity", metavar="RECIPE",
                    help="pair with this recipe's rows instead of the full cache's (a candidate vs a preset)")
    pa.set_defaults(func=cmd_paired)
