"""The table ``kvstack eval`` prints when it ends: task x recipe, score, against the full cache, bytes.

It summarises only the cells of the grid just asked for (a results file may hold other runs),
including cells an earlier run already finished, so a resumed run still shows the whole grid.
The Markdown report with plots stays ``kvstack report``'s job.
"""

from __future__ import annotations

from pathlib import Path

from kvstack.eval.report import summarize
from kvstack.eval.results import read_rows


def _score(s: dict) -> tuple[str, str]:
    """(score, relative to full): contains-accuracy and its share of the full cache's, or perplexity and its delta."""
    if s.get("kind") == "nll":
        ppl, delta = s.get("ppl"), s.get("ppl_delta")
        return (f"ppl {ppl:.3f}" if ppl is not None else "-",
                f"{delta:+.3f} ppl" if delta is not None else "-")
    acc, rel = s.get("contains"), s.get("relative")
    return (f"{acc:.0%}" if acc is not None else "-", f"{rel:.0%}" if rel is not None else "-")


def _ratio(s: dict) -> str:
    """Against fp16 where the rows say so; older rows only know the model's own dtype."""
    if s.get("ratio_fp16") is not None:
        return f"{s['ratio_fp16']:.2f}x"
    return f"{s['ratio']:.2f}x (vs model)" if s.get("ratio") is not None else "-"


def results_table(path: str | Path, model: str, tasks: list[str], lengths: list[int], recipes: list[str]) -> str:
    """The grid's summary as an aligned text table (one row per task, length and recipe)."""
    from kvstack.cli_text import fmt_bytes, table

    rows, _ = read_rows(path)
    wanted = set(recipes)
    mine = [r for r in rows if r.get("model") == model and r.get("task") in tasks
            and r.get("length") in lengths and r.get("recipe") in wanted]
    order = {r: i for i, r in enumerate(recipes)}
    summary = sorted(summarize(mine), key=lambda s: (tasks.index(s["task"]), s["length"], order[s["recipe"]]))
    out = []
    for s in summary:
        if not s["n"]:
            out.append((s["task"], str(s["length"]), s["recipe"], "0", f"skipped: {s['skip_reason'][:40]}",
                        "", "", ""))
            continue
        score, rel = _score(s)
        out.append((s["task"], str(s["length"]), s["recipe"], str(s["n"]), score, rel,
                    fmt_bytes(s["cache_bytes"]) if s.get("cache_bytes") is not None else "-", _ratio(s)))
    head = ("task", "length", "recipe", "n", "score", "vs full", "cache bytes", "ratio vs fp16")
    return table(out, head)
