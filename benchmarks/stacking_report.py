"""The stacking study's report: frontier tables, named recipes per ratio band, plots (``frontier.md``).

Written by ``benchmarks/stacking.py --report`` from its results file. Question-agnostic recipes (the
cache is built once, before any question) and question-aware ones (Q2C: built per question) get
separate tables and separate winners - ``best:Nx`` and ``qa:Nx`` - because they answer different
deployment questions; mixing them would let a per-question cache win a question-agnostic preset.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import date

import stacking as st

GROUP_NAMES = {False: "question-agnostic", True: "question-aware"}
PRESET_PREFIX = {False: "best", True: "qa"}


def best_per_band(sums: dict, recipes: list[str], qa: bool) -> dict[int, str | None]:
    """Per ratio band [N, 2N): the best-scoring recipe of the group (``qa``: needs the question), or None."""
    out = {}
    for band in st.BANDS:
        inside = [r for r in recipes if st.question_aware(r) == qa and st.in_band(st.recipe_ratio(sums[r]), band)]
        out[band] = max(inside, key=lambda r: st.score(sums[r], st.TASKS)) if inside else None
    return out


def cell(s: dict | None, same: tuple[int, int] | None = None) -> str:
    if not s or s.get("contains") is None:
        return "-"
    n = s["n"]
    k = round(s["contains"] * n)
    lo, hi = st.wilson(k, n)
    rel = "-" if s.get("relative") is None else f"{s['relative']:.2f}"
    d = s.get("answer_nll_delta")
    text = f"{k}/{n} [{lo:.2f}-{hi:.2f}] rel {rel}" + (f" ΔNLL {d:+.2f}" if d is not None else "")
    return text + (f" same {same[0]}/{same[1]}" if same and s["recipe"] != st.FULL else "")


def table_md(recipes: list[str], sums: dict, marks: dict[str, str] | None = None) -> str:
    same = st.same_verdicts()
    head = "| recipe | B/token | ratio vs fp16 | " + " | ".join(st.TASKS) + " | |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in sorted(recipes, key=lambda r: -st.recipe_ratio(sums[r])):
        bpt = st.statistics_mean([s["bytes_per_token"] for s in sums[r].values()])
        cells = " | ".join(cell(sums[r].get(t), same.get((r, t))) for t in st.TASKS)
        lines.append(f"| `{r}` | {bpt:,.0f} | {st.recipe_ratio(sums[r]):.2f}x | {cells} | {(marks or {}).get(r, '')} |")
    return "\n".join(lines)


def plots(sums: dict, confirmed: list[str], screened_only: list[str]) -> list[str]:
    """Per task: relative accuracy and gold-answer NLL delta vs bytes/token; each group's confirmed frontier."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kvstack.eval.plots import _frontier

    panels = (("relative", "accuracy relative to the full cache (same samples)", True),
              ("answer_nll_delta", "gold answer NLL delta vs full cache (nats/token, lower is better)", False))
    styles = {False: dict(color="tab:blue", marker="o"), True: dict(color="tab:orange", marker="^")}
    fronts = {False: "tab:green", True: "tab:red"}
    names = []
    for task in st.TASKS:
        fig, axes = plt.subplots(1, 2, figsize=(16, 6), dpi=100)
        for ax, (key, label, higher) in zip(axes, panels):
            pts = [(sums[r][task]["bytes_per_token"], sums[r][task].get(key) or 0.0, r) for r in screened_only
                   if task in sums[r]]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], color="0.75", marker=".", label="screen only")
            for qa in st.GROUPS:
                pts = [(sums[r][task]["bytes_per_token"], sums[r][task].get(key) or 0.0, r) for r in confirmed
                       if task in sums[r] and st.question_aware(r) == qa]
                if not pts:
                    continue
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], zorder=3, label=f"{GROUP_NAMES[qa]} (confirmed)",
                           **styles[qa])
                for x, y, r in pts:
                    ax.annotate(r, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
                front = _frontier([(x, y) for x, y, _ in pts], higher)
                ax.step([p[0] for p in front], [p[1] for p in front], where="post", color=fronts[qa], alpha=0.7,
                        label=f"{GROUP_NAMES[qa]} frontier", zorder=2)
            for band in st.BANDS:
                ax.axvline(st.fp16_per_token() / band, color="tab:red", alpha=0.3, ls="--")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("cache bytes per context token (log); dashed: 4/8/16/32x smaller than fp16 dense")
            ax.set_ylabel(label)
            if key == "answer_nll_delta":
                ax.set_yscale("symlog", linthresh=0.1)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        n = max((sums[r][task]["n"] for r in confirmed if task in sums[r]), default=0)
        fig.suptitle(f"{task} at {st.LENGTH} tokens, {st.MODEL} (confirmed: n={n} per recipe)")
        fig.tight_layout()
        name = f"{task}_{st.LENGTH}.png"
        fig.savefig(st.OUT / name)
        plt.close(fig)
        names.append(name)
    return names


def report(confirm_samples: int, final_samples: int) -> str:
    """Write ``frontier.md`` (and the plots) in the results folder; returns its text. Recipes are named from the
    finalists (``final_samples`` on the needle tasks) when the final stage ran, else from the confirmed ones."""
    sums = st.summaries()
    recipes = [r for r in sums if r != st.FULL and all(t in sums[r] for t in st.TASKS)]
    confirmed = [r for r in recipes if min(sums[r][t]["n"] for t in st.TASKS) >= confirm_samples]
    others = [r for r in recipes if r not in confirmed]
    final = [r for r in confirmed if min(sums[r][t]["n"] for t in st.FINAL_TASKS) >= final_samples]
    best = {qa: best_per_band(sums, final or confirmed, qa) for qa in st.GROUPS}
    marks = defaultdict(str)
    for qa, per_band in best.items():
        for band, r in per_band.items():
            if r:
                marks[r] += f" {PRESET_PREFIX[qa]}:{band}x"
    for task in st.TASKS:
        for qa in st.GROUPS:
            group = [r for r in confirmed if task in sums[r] and st.question_aware(r) == qa]
            for r in st.pareto(group, sums, [task]):
                marks[r] += f" ★{task}"
    names = plots(sums, confirmed, others)
    full = sums.get(st.FULL, {})
    meta = json.loads((st.OUT / "meta.json").read_text())
    lines = [
        f"# Stacking study: {st.MODEL} at {st.LENGTH} tokens ({date.today()})", "",
        f"Model {st.MODEL}; {meta['versions']}. Accuracy = *contains* of the greedy answer; `k/n [95% Wilson]`, "
        "`rel` = accuracy / full cache's on the same samples, `ΔNLL` = gold-answer NLL per token minus the full "
        f"cache's. Bytes are `cache.nbytes` / context tokens; ratio vs the fp16 dense cache "
        f"({meta['fp16_bytes_per_token']:.0f} B/token). ★task = on that task's Pareto frontier *within its group* "
        "(ratio vs mean rel. accuracy capped at 1, ties by ΔNLL). Produced by `benchmarks/stacking.py`.", "",
        "Full cache: " + ", ".join(f"{t} {cell(full.get(t))}" for t in st.TASKS), "",
    ]
    for qa in st.GROUPS:
        mine = [r for r in confirmed if st.question_aware(r) == qa]
        what = ("needs the question when the cache is built (Q2C): one cache per question" if qa else
                "built once, before any question: reusable across questions")
        lines += [f"## Confirmed, {GROUP_NAMES[qa]} (n >= {confirm_samples} per task; {what})", "",
                  table_md(mine, sums, marks), ""]
    lines += ["## Best recipe per ratio band [N, 2N) (mean relative accuracy over the tasks the full cache answers)",
              "", (f"Among the {len(final)} finalists (n = {final_samples} on {', '.join(st.FINAL_TASKS)}; multihop "
                   f"stays at n = {confirm_samples})." if final else "Among the confirmed recipes."), ""]
    for qa in st.GROUPS:
        for band, r in best[qa].items():
            name = f"{PRESET_PREFIX[qa]}:{band}x"
            lines.append(f"* **{name}**: " + (f"`{r}` ({st.recipe_ratio(sums[r]):.2f}x)" if r else "none confirmed"))
    lines += ["", "## Screened only (fewer samples; for triage, not conclusions)", "", table_md(others, sums, marks),
              ""]
    lines += [f"![{n}]({n})" for n in names]
    (st.OUT / "frontier.md").write_text("\n".join(lines) + "\n")
    return "\n".join(lines)
