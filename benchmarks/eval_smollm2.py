"""Issue 3 part B (a) and (c): SmolLM2-135M-Instruct, extractive QA over real documents and
perplexity of held-out essays, every recipe relative to the model's own full cache; then the
kvpress side by side on the same QA samples.

    .venv/bin/python benchmarks/eval_smollm2.py [--qa-samples 12] [--ppl-samples 8] [--threads 1] [--no-peers]

kvpress recipes need `make peers`. Resumable (reruns skip finished cells; raising the sample
counts adds only the new samples). Writes benchmarks/reports/smollm2/results.jsonl and the
report (report.md + plots) beside it. The same
grid from the command line: `kvstack eval --recipes ... --tasks qa --lengths 1k --samples 12`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kvstack.eval.report import summarize, write_report
from kvstack.eval.results import read_rows
from kvstack.eval.runner import EvalSpec, Runner

OUT = Path(__file__).resolve().parent / "reports" / "smollm2"
MODEL = "smollm2-135m"
LENGTH = 1024
# ~50% / ~25% of a 1k context for StreamingLLM: sink 4 + window
RECIPES = [
    "identity", "int8", "int4", "int2", "kivi:2", "streaming:window=508", "streaming:window=252", "snapkv:0.5",
    "snapkv:0.25", "q2c:0.5", "q2c:0.25", "h2o:0.25",
]
# (c): kvpress's own harness with no press (must match identity), StreamingLLM and SnapKV at 50% / 25% kept
PEERS = [
    "kvpress:none", "kvpress:StreamingLLMPress:0.5", "kvpress:StreamingLLMPress:0.75", "kvpress:SnapKVPress:0.5",
    "kvpress:SnapKVPress:0.75",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qa-samples", type=int, default=12)
    ap.add_argument("--ppl-samples", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-peers", action="store_true", help="skip the kvpress recipes")
    ap.add_argument("--table", action="store_true", help="only print the one-table summary of finished results")
    args = ap.parse_args()
    if args.table:
        print(table())
        return
    OUT.mkdir(parents=True, exist_ok=True)
    peers = [] if args.no_peers else PEERS
    model = tokenizer = None
    for task, samples in (("qa", args.qa_samples), ("ppl", args.ppl_samples)):
        spec = EvalSpec(MODEL, RECIPES + peers, [task], [LENGTH], samples, threads=args.threads)
        runner = Runner(spec, OUT / "results.jsonl", model=model, tokenizer=tokenizer)
        print(task, runner.run(), flush=True)
        model, tokenizer = runner.model, runner.tokenizer
    print(write_report(OUT / "results.jsonl", OUT))


def _f(x, fmt: str) -> str:
    return "-" if x is None else fmt.format(x)


def table() -> str:
    """QA and perplexity side by side, one row per recipe (for RESULTS.md)."""
    summary = summarize(read_rows(OUT / "results.jsonl")[0])
    by = {(s["task"], s["recipe"]): s for s in summary}
    lines = [
        "| recipe | bytes/token | ratio | QA contains | QA F1 | agree | answer NLL Δ | ppl | ppl Δ | n QA/ppl |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for recipe in RECIPES + PEERS:
        q, p = by.get(("qa", recipe), {}), by.get(("ppl", recipe), {})
        lines.append(
            f"| `{recipe}` | {_f(q.get('bytes_per_token'), '{:,.0f}')} | {_f(q.get('ratio'), '{:.2f}x')} | "
            f"{_f(q.get('contains'), '{:.2f}')} | {_f(q.get('f1'), '{:.2f}')} | {_f(q.get('agree'), '{:.2f}')} | "
            f"{_f(q.get('answer_nll_delta'), '{:+.3f}')} | {_f(p.get('ppl'), '{:.2f}')} | "
            f"{_f(p.get('ppl_delta'), '{:+.2f}')} | {q.get('n', 0)}/{p.get('n', 0)} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
