"""Issue 4 report: every selection method at 50 / 25 / 12.5% kept on four tasks at 4k tokens on
the bundled retrieval model, next to kvpress's presses of the same name, against bytes held.

    .venv/bin/python benchmarks/select_report.py [--samples 8] [--peer-samples 8] [--threads 1]
    .venv/bin/python benchmarks/select_report.py --table      # tables for RESULTS.md from what is done
    .venv/bin/python benchmarks/select_report.py --timing     # prefill vs KVzip's extra pass

Resumable (cells already in the results file are skipped). kvpress recipes need `make peers`;
they run at 25% kept only (the issue's goal comparison), on the same token ids. Writes
benchmarks/reports/select/{<task>.jsonl,peers.jsonl,all.jsonl,report.md,*.png,summary.md}.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from kvstack.eval.report import summarize, write_report
from kvstack.eval.results import read_rows
from kvstack.eval.runner import EvalSpec, Runner

OUT = Path(__file__).resolve().parent / "reports" / "select"
MODEL = "kvstack-retrieval"
TASKS = ["niah_single", "multihop", "niah_multikey", "qa"]
LENGTH = 4096
KEEP = (0.5, 0.25, 0.125)
METHODS = ["q2c", "snapkv", "h2o", "tova", "knorm", "keydiff", "random", "expected", "kvzip", "critical", "merge"]
FASTGEN = ["fastgen:0.5", "fastgen:0.8", "fastgen:0.95"]
# kvpress presses of the same name, at 25% kept (compression_ratio 0.75); composed presses take press=<scorer>.
# Six only: on the shared 2-core machine one kvpress cell takes 40-130 s.
PEERS = [
    "kvpress:SnapKVPress:0.75", "kvpress:ExpectedAttentionPress:0.75", "kvpress:KeyDiffPress:0.75",
    "kvpress:KVzipPress:0.75", "kvpress:CriticalKVPress:0.75,press=ExpectedAttentionPress",
    "kvpress:AdaKVPress:0.75,press=ExpectedAttentionPress",
]


def recipes() -> list[str]:
    out = ["identity"]
    for keep in KEEP:
        out.append(f"streaming:sink=4,window={int(keep * LENGTH) - 4}")
        out += [f"{m}:{keep}" for m in METHODS]
        out.append(f"expected:{keep},alloc=adakv")
    return out + FASTGEN


def kept_share(recipe: str) -> float | None:
    """The share of tokens a recipe asks to keep (None for identity / fastgen, whose share is an outcome)."""
    if recipe.startswith("streaming"):
        return (int(recipe.split("window=")[1]) + 4) / LENGTH
    if recipe.startswith("kvpress:") and recipe.count(":") == 2:
        return round(1 - float(recipe.split(":")[2].split(",")[0]), 4)
    head = recipe.split(":")
    if len(head) > 1 and head[0] not in ("fastgen", "kvpress"):
        return float(head[1].split(",")[0])
    return None


def method(recipe: str) -> str:
    if recipe.startswith("kvpress:"):
        parts = recipe.split(":")
        name = parts[1] + ("" if "press=" not in recipe else "(" + recipe.split("press=")[1] + ")")
        return "kvpress " + name
    name = recipe.split(":")[0]
    return name + (",adakv" if "alloc=adakv" in recipe else "")


def spread(p: float | None, n: int) -> str:
    """Binomial standard error of an accuracy over ``n`` samples, as ``±x``."""
    return "" if p is None or not n else f"±{math.sqrt(max(p * (1 - p), 0) / n):.2f}"


def combined() -> Path:
    """kvstack's and kvpress's rows in one file (``all.jsonl``), what the report reads."""
    parts = [OUT / f"{task}.jsonl" for task in TASKS] + [OUT / "peers.jsonl"]
    text = "".join(p.read_text() for p in parts if p.is_file())
    (OUT / "all.jsonl").write_text(text)
    return OUT / "all.jsonl"


def tables() -> str:
    summary = [s for s in summarize(read_rows(combined())[0]) if s.get("kind") == "generate"]
    by = {(s["task"], s["recipe"]): s for s in summary}
    lines = []
    # one table per task: rows = methods, columns = kept share (contains accuracy and bytes/token)
    for task in TASKS:
        full = by.get((task, "identity"), {})
        lines += [f"\n#### {task} (full cache: contains {full.get('contains', float('nan')):.2f}, "
                  f"answer NLL {full.get('answer_nll', float('nan')):.3f}, n={full.get('n', 0)})\n",
                  "| method | " + " | ".join(f"{k:g} kept: acc / NLL Δ / B/tok" for k in KEEP) + " |",
                  "|---|" + "---|" * len(KEEP)]
        names: dict[str, dict[float, dict]] = {}
        for s in summary:
            if s["task"] != task or s["recipe"] == "identity":
                continue
            share = kept_share(s["recipe"])
            if share is None:
                continue
            names.setdefault(method(s["recipe"]), {})[min(KEEP, key=lambda k, x=share: abs(k - x))] = s
        for name, cells in names.items():
            parts = []
            for k in KEEP:
                c = cells.get(k)
                if not c or c.get("contains") is None:
                    parts.append("-")
                    continue
                d = c.get("answer_nll_delta")
                parts.append(f"{c['contains']:.2f}{spread(c['contains'], c['n'])} / "
                             f"{'-' if d is None else f'{d:+.2f}'} / {c['bytes_per_token']:,.0f}")
            lines.append(f"| {name} | " + " | ".join(parts) + " |")
        fast = [s for s in summary if s["task"] == task and s["recipe"].startswith("fastgen")]
        for s in fast:
            lines.append(f"| `{s['recipe']}` (kept {s['bytes_per_token'] / full.get('bytes_per_token', 1):.0%} of "
                         f"bytes) | {s['contains']:.2f}{spread(s['contains'], s['n'])} / "
                         f"{s.get('answer_nll_delta', 0):+.2f} / {s['bytes_per_token']:,.0f} | | |")
    return "\n".join(lines)


def timing(samples: int = 1) -> dict:
    """Seconds of the plain prefill and of KVzip's reconstruction pass on the same contexts."""
    import torch

    import kvstack
    from kvstack.eval.prompt import format_sample
    from kvstack.eval.tasks import get_task
    from kvstack.zoo import load

    model, tok = load(MODEL)
    rows = []
    for sample in get_task("niah_single").samples(tok, LENGTH, samples, 0):
        ctx = format_sample(tok, sample).context_ids
        start = time.perf_counter()
        plain = kvstack.compress(model, ctx, "identity")
        plain_s = time.perf_counter() - start
        zipped = kvstack.compress(model, ctx, "kvzip:0.25")
        rows.append({"tokens": int(ctx.numel()), "prefill_s": plain.stats["prefill_seconds"], "total_s": plain_s,
                     "kvzip_pass_s": zipped.stats["kvzip_seconds"], "kvzip_prefill_s": zipped.stats["prefill_seconds"]})
    out = {"threads": torch.get_num_threads(), "rows": rows}
    (OUT / "timing.json").write_text(json.dumps(out, indent=1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--peer-samples", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tasks", nargs="*", default=TASKS)
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--only-peers", action="store_true")
    ap.add_argument("--table", action="store_true", help="print the per-task tables of finished results")
    ap.add_argument("--timing", action="store_true", help="time the prefill and KVzip's extra pass")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.timing:
        print(json.dumps(timing(), indent=1))
        return
    if not args.table:
        if not args.only_peers:
            for task in args.tasks:  # one file per task, so tasks can run side by side
                spec = EvalSpec(MODEL, recipes(), [task], [LENGTH], args.samples, threads=args.threads)
                print(Runner(spec, OUT / f"{task}.jsonl").run(), flush=True)
        if not args.no_peers:
            spec = EvalSpec(MODEL, PEERS, args.tasks, [LENGTH], args.peer_samples, threads=args.threads)
            print(Runner(spec, OUT / "peers.jsonl").run(), flush=True)  # own file: it may run beside the grid
    print(write_report(combined(), OUT))
    text = tables()
    (OUT / "summary.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
