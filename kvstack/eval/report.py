"""Summaries of a results file: per (model, task, length, recipe) accuracy, perplexity, bytes and
time, each against the same model's full cache, and the Pareto frontier of accuracy vs bytes.

"Full cache" is the ``identity`` recipe on the same samples: ratios and agreement are computed
only over samples both ran, so a partial run still compares like with like.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from datetime import date
from pathlib import Path

from kvstack.errors import InputError
from kvstack.eval.metrics import perplexity
from kvstack.eval.results import read_rows

FULL = "identity"
LEGEND = (
    "Accuracy is *contains* (every required answer string appears in the normalised output), *exact* "
    "(SQuAD-normalised equality) and SQuAD token *F1*; *rel. full* divides a recipe's contains-accuracy by the "
    "full cache's (identity) on the same samples, *agree* is the share of answers identical to the full cache's. "
    "*answer NLL* is the teacher-forced negative log-likelihood per token (nats) of the gold answer after the "
    "question: a signal even where greedy answers fail. Perplexity is of a held-out continuation; bytes per token "
    "is what the cache really holds divided by context tokens; *ratio* is a plain cache in the model's own dtype "
    "(the one it was loaded in: fp32 doubles it against fp16) divided by those bytes. ★ = on the accuracy/bytes "
    "Pareto frontier of its task and length (perplexity for perplexity tasks)."
)


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def _per_token(rows: list[dict], total: str, count: str) -> float:
    return sum(r[total] for r in rows) / max(sum(r[count] for r in rows), 1)


def current(rows: list[dict]) -> list[dict]:
    """``rows`` without errors that a later run redid: a resumed run retries a cell's ``error`` row and
    appends its new row, so a cell counts once (its final row, or its last error if it never finished)."""
    def key(r: dict) -> tuple:
        return r.get("model"), r.get("seed"), r.get("task"), r.get("length"), r.get("index"), r.get("recipe")

    final = {key(r) for r in rows if r.get("status") != "error"}
    last_error = {key(r): id(r) for r in rows if r.get("status") == "error"}
    return [r for r in rows if r.get("status") != "error" or (key(r) not in final and last_error[key(r)] == id(r))]


def model_labels(rows: list[dict]) -> dict[int, str]:
    """Each row's model as the report names it: with its weights dtype and sample seed when one file holds
    several of them for that model. Why: rows of fp32 and bf16 weights, or of two sample sets, share sample
    indices; pooled, a recipe's n and its pairing with the full cache's answers would silently mix them."""
    dtypes: dict[str, set] = defaultdict(set)
    seeds: dict[str, set] = defaultdict(set)
    for r in rows:
        dtypes[r["model"]].add(r.get("dtype"))
        seeds[r["model"]].add(r.get("seed"))
    labels = {}
    for r in rows:
        m = r["model"]
        extra = ([f"{r.get('dtype')} weights"] if len(dtypes[m]) > 1 else []) + (
            [f"seed {r.get('seed')}"] if len(seeds[m]) > 1 else [])
        labels[id(r)] = f"{m} ({', '.join(extra)})" if extra else m
    return labels


def summarize(rows: list[dict]) -> list[dict]:
    """One dict per (model, task, length, recipe), in first-seen order; errors later redone are left out.
    ``model`` names the weights dtype and the seed too where the rows mix them (:func:`model_labels`)."""
    rows = current(rows)
    label = model_labels(rows)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    skipped: dict[tuple, list[str]] = defaultdict(list)
    for r in rows:
        key = (label[id(r)], r["task"], r["length"], r["recipe"])
        if r.get("status") == "ok":
            groups[key].append(r)
        else:
            skipped[key].append(r.get("reason", r.get("status", "")))
            groups.setdefault(key, [])
    out = []
    for (model, task, length, recipe), rs in groups.items():
        full = {r["index"]: r for r in groups.get((model, task, length, FULL), [])}
        s = {
            "model": model, "task": task, "length": length, "recipe": recipe, "n": len(rs),
            "skipped": len(skipped.get((model, task, length, recipe), [])),
            "skip_reason": (skipped.get((model, task, length, recipe)) or [""])[0],
            "system": rs[0].get("system", "kvstack") if rs else "",
            "context_tokens": _mean([r["context_tokens"] for r in rs]),
            "bytes_per_token": _mean([r["bytes_per_token"] for r in rs]),
            "ratio": _mean([r["ratio"] for r in rs]),
            "ratio_fp16": _mean([r.get("ratio_fp16") for r in rs]),
            "dense_dtype": rs[0].get("dense_dtype", "") if rs else "",
            "cache_bytes": _mean([r.get("cache_bytes") for r in rs]),
            "prefill_s": _mean([r.get("prefill_s") for r in rs]),
            "compress_s": _mean([r.get("compress_s") for r in rs]),
            "generate_s": _mean([r.get("generate_s") for r in rs]),
        }
        paired = [r for r in rs if r["index"] in full]
        if rs and "nll_sum" in rs[0]:
            s["kind"] = "nll"
            s["ppl"] = perplexity(sum(r["nll_sum"] for r in rs), sum(r["nll_tokens"] for r in rs))
            if paired:
                mine = perplexity(sum(r["nll_sum"] for r in paired), sum(r["nll_tokens"] for r in paired))
                ref = perplexity(sum(full[r["index"]]["nll_sum"] for r in paired),
                                 sum(full[r["index"]]["nll_tokens"] for r in paired))
                s["ppl_full"], s["ppl_delta"] = ref, mine - ref
        elif rs:
            s["kind"] = "generate"
            s["exact"] = _mean([r["exact"] for r in rs])
            s["contains"] = _mean([r["contains"] for r in rs])
            s["f1"] = _mean([r.get("f1") for r in rs])
            scored = [r for r in rs if "answer_nll_sum" in r]
            if scored:
                s["answer_nll"] = _per_token(scored, "answer_nll_sum", "answer_tokens")
                both = [r for r in scored if "answer_nll_sum" in full.get(r["index"], {})]
                if both:
                    ref = _per_token([full[r["index"]] for r in both], "answer_nll_sum", "answer_tokens")
                    s["answer_nll_delta"] = _per_token(both, "answer_nll_sum", "answer_tokens") - ref
            if paired:
                ref = _mean([full[r["index"]]["contains"] for r in paired])
                mine = _mean([r["contains"] for r in paired])
                s["contains_full"] = ref
                s["relative"] = mine / ref if ref else None
                s["agree"] = _mean([float(r["prediction"] == full[r["index"]]["prediction"]) for r in paired])
        out.append(s)
    mark_frontier(out)
    return out


def quality(s: dict) -> float | None:
    """Higher is better: contains-accuracy, or minus perplexity."""
    if s.get("kind") == "nll":
        return -s["ppl"] if s.get("ppl") is not None and math.isfinite(s["ppl"]) else None
    return s.get("contains")


def mark_frontier(summary: list[dict]) -> None:
    """Set ``frontier`` on recipes no other recipe beats on both bytes per token and quality."""
    by_cell: dict[tuple, list[dict]] = defaultdict(list)
    for s in summary:
        if s["n"] and quality(s) is not None:
            by_cell[(s["model"], s["task"], s["length"])].append(s)
    for cell in by_cell.values():
        for s in cell:
            s["frontier"] = not any(
                o is not s and o["bytes_per_token"] <= s["bytes_per_token"] and quality(o) >= quality(s)
                and (o["bytes_per_token"] < s["bytes_per_token"] or quality(o) > quality(s))
                for o in cell
            )


def _f(x, fmt: str = "{:.2f}", none: str = "-") -> str:
    return none if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def markdown(summary: list[dict], source: str = "") -> str:
    lines = [f"# kvstack eval report ({date.today().isoformat()})", ""]
    if source:
        lines += [f"Results: `{source}`. " + LEGEND, ""]
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for s in summary:
        cells[(s["model"], s["task"])].append(s)
    for (model, task), ss in cells.items():
        ss = sorted(ss, key=lambda s: (s["length"], -(s["bytes_per_token"] or 0)))
        lines += [f"## {task} - {model}", ""]
        dtypes = {s.get("dense_dtype") for s in ss if s.get("dense_dtype")}
        ratio = f"ratio vs {dtypes.pop()}" if len(dtypes) == 1 else "ratio vs model dtype"
        if any(s.get("kind") == "nll" for s in ss):
            head = (f"| length | recipe | n | perplexity | Δ vs full | bytes/token | {ratio} | prefill s | compress s "
                    "| |")
            lines += [head, "|" + "---|" * (head.count("|") - 1)]
            for s in ss:
                lines.append(
                    f"| {s['length']} | `{s['recipe']}` | {s['n']} | {_f(s.get('ppl'), '{:.3f}')} | "
                    f"{_f(s.get('ppl_delta'), '{:+.3f}')} | {_f(s['bytes_per_token'], '{:.0f}')} | "
                    f"{_f(s['ratio'], '{:.2f}x')} | {_f(s['prefill_s'])} | {_f(s['compress_s'], '{:.3f}')} | "
                    f"{'★' if s.get('frontier') else ''}{_skip(s)} |"
                )
        else:
            head = ("| length | recipe | n | contains | exact | F1 | rel. full | agree | answer NLL | Δ vs full "
                    f"| bytes/token | {ratio} | prefill s | compress s | |")
            lines += [head, "|" + "---|" * (head.count("|") - 1)]
            for s in ss:
                lines.append(
                    f"| {s['length']} | `{s['recipe']}` | {s['n']} | {_f(s.get('contains'))} | "
                    f"{_f(s.get('exact'))} | {_f(s.get('f1'))} | {_f(s.get('relative'))} | {_f(s.get('agree'))} | "
                    f"{_f(s.get('answer_nll'), '{:.3f}')} | {_f(s.get('answer_nll_delta'), '{:+.3f}')} | "
                    f"{_f(s['bytes_per_token'], '{:.0f}')} | {_f(s['ratio'], '{:.2f}x')} | {_f(s['prefill_s'])} | "
                    f"{_f(s['compress_s'], '{:.3f}')} | {'★' if s.get('frontier') else ''}{_skip(s)} |"
                )
        lines.append("")
    return "\n".join(lines)


def _skip(s: dict) -> str:
    return f" skipped {s['skipped']}: {s['skip_reason'][:80]}" if s["skipped"] else ""


def write_report(results: str | Path, out_dir: str | Path, plots: bool = True) -> Path:
    """Write ``report.md`` (and one PNG per task and length) into ``out_dir``; returns the Markdown path."""
    rows, truncated = read_rows(results)
    if not rows:
        raise InputError(f"{results} holds no finished cells yet; run `kvstack eval --out {results}` first")
    summary = summarize(rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(summary, str(results))
    if truncated:
        text += "\n_Note: the results file ends in a truncated line (a run was interrupted); it was ignored._\n"
    if plots:
        from kvstack.eval.plots import pareto_plots

        names = pareto_plots(summary, out)
        text += "\n" + "\n".join(f"![{n}]({n})" for n in names) + "\n"
    path = out / "report.md"
    path.write_text(text, encoding="utf-8")
    return path
