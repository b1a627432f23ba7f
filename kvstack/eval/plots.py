"""Accuracy (or perplexity) against bytes per token, one PNG per (model, task, length), with
the Pareto frontier drawn: the recipes worth choosing at each memory budget. Question tasks get
a second panel with the gold answer's NLL, which still ranks recipes when a weak model's greedy
answers mostly fail."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from kvstack.errors import ModelNotInstalledError

SYSTEMS = (("kvstack", "o", "tab:blue"), ("kvpress", "^", "tab:orange"))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def _frontier(points: list[tuple[float, float]], higher_better: bool) -> list[tuple[float, float]]:
    """Points no other point beats on both bytes (fewer) and the metric, sorted by bytes."""
    better = (lambda a, b: a >= b) if higher_better else (lambda a, b: a <= b)
    out = [p for p in points if not any(q != p and q[0] <= p[0] and better(q[1], p[1]) for q in points)]
    return sorted(out)


def _panel(ax, ss: list[dict], key: str, label: str, higher_better: bool) -> None:
    pts = [s for s in ss if s.get(key) is not None]
    for system, marker, color in SYSTEMS:
        mine = [s for s in pts if s.get("system", "kvstack") == system]
        if mine:
            ax.scatter([s["bytes_per_token"] for s in mine], [s[key] for s in mine], marker=marker, color=color,
                       label=system, zorder=3)
    front = _frontier([(s["bytes_per_token"], s[key]) for s in pts], higher_better)
    if front:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="tab:green", alpha=0.7,
                label="Pareto frontier", zorder=2)
    for s in pts:
        ax.annotate(s["recipe"], (s["bytes_per_token"], s[key]), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xscale("log", base=2)
    if key == "ppl":  # one broken recipe (int2) would flatten everyone else
        ax.set_yscale("log")
    ax.set_xlabel("cache bytes per context token (log scale)")
    ax.set_ylabel(label)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)


def pareto_plots(summary: list[dict], out: Path) -> list[str]:
    """Write the plots into ``out``; returns their file names."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ModelNotInstalledError("plots need matplotlib: pip install matplotlib (or use --no-plots)") from exc

    cells: dict[tuple, list[dict]] = defaultdict(list)
    for s in summary:
        if s["n"] and s.get("bytes_per_token"):
            cells[(s["model"], s["task"], s["length"])].append(s)
    models = {k[0] for k in cells}
    names = []
    for (model, task, length), ss in cells.items():
        nll = ss[0].get("kind") == "nll"
        panels = [("ppl", "perplexity (lower is better)", False)] if nll else [
            ("contains", "accuracy (contains)", True)]
        if not nll and any(s.get("answer_nll") is not None for s in ss):
            panels.append(("answer_nll", "gold answer NLL per token (lower is better)", False))
        fig, axes = plt.subplots(1, len(panels), figsize=(7.5 * len(panels), 5), dpi=100, squeeze=False)
        for ax, (key, label, higher) in zip(axes[0], panels):
            _panel(ax, ss, key, label, higher)
        title = f"{task} at {length} tokens" + (f" - {model}" if len(models) > 1 else "")
        fig.suptitle(f"{title} (n={max(s['n'] for s in ss)} per recipe)")
        fig.tight_layout()
        name = (f"{_slug(model)}_" if len(models) > 1 else "") + f"{task}_{length}.png"
        fig.savefig(out / name)
        plt.close(fig)
        names.append(name)
    return names
