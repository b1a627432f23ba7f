"""Issue 3 part B (c), second half: kvstack's own retrieval model at 4k tokens, two retrieval tasks,
kvstack's StreamingLLM / SnapKV / Q2C against kvpress's StreamingLLMPress / SnapKVPress at 50% and
25% kept, on identical inputs.

    .venv/bin/python benchmarks/eval_retrieval.py [--samples 8] [--threads 1] [--no-peers]

kvpress recipes need `make peers`. Resumable. Writes benchmarks/reports/retrieval/results.jsonl and
the report beside it; `--table` prints the one-table summary for RESULTS.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kvstack.eval.report import summarize, write_report
from kvstack.eval.results import read_rows
from kvstack.eval.runner import EvalSpec, Runner

OUT = Path(__file__).resolve().parent / "reports" / "retrieval"
MODEL = "kvstack-retrieval"
TASKS = ["niah_single", "niah_multikey"]
LENGTH = 4096
RECIPES = [
    "identity", "int4", "streaming:window=2044", "streaming:window=1020", "snapkv:0.5", "snapkv:0.25", "q2c:0.5",
    "q2c:0.25", "snapkv:0.25,sink=4", "q2c:0.25,sink=4",
]
PEERS = [
    "kvpress:none", "kvpress:StreamingLLMPress:0.5", "kvpress:StreamingLLMPress:0.75", "kvpress:SnapKVPress:0.5",
    "kvpress:SnapKVPress:0.75",
]


def table() -> str:
    summary = summarize(read_rows(OUT / "results.jsonl")[0])
    by = {(s["task"], s["recipe"]): s for s in summary}
    cols = " | ".join(f"{t} contains | {t} answer NLL Δ" for t in TASKS)
    head = f"| recipe | bytes/token | ratio | {cols} | n |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for recipe in RECIPES + PEERS:
        cells = [by.get((t, recipe), {}) for t in TASKS]
        first = cells[0]
        parts = []
        for c in cells:
            acc = "-" if c.get("contains") is None else f"{c['contains']:.2f}"
            d = "-" if c.get("answer_nll_delta") is None else f"{c['answer_nll_delta']:+.3f}"
            parts += [acc, d]
        bpt = "-" if first.get("bytes_per_token") is None else f"{first['bytes_per_token']:,.0f}"
        ratio = "-" if first.get("ratio") is None else f"{first['ratio']:.2f}x"
        lines.append(f"| `{recipe}` | {bpt} | {ratio} | " + " | ".join(parts) + f" | {first.get('n', 0)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--table", action="store_true", help="only print the summary table of finished results")
    args = ap.parse_args()
    if args.table:
        print(table())
        return
    OUT.mkdir(parents=True, exist_ok=True)
    recipes = RECIPES + ([] if args.no_peers else PEERS)
    runner = Runner(EvalSpec(MODEL, recipes, TASKS, [LENGTH], args.samples, threads=args.threads),
                    OUT / "results.jsonl")
    print(runner.run(), flush=True)
    print(write_report(OUT / "results.jsonl", OUT))


if __name__ == "__main__":
    main()
