"""Cache bytes against context on log-log axes, one line per model or what-if.

matplotlib is imported here and only here, lazily, so the rest of the planner stays
dependency-free; ``pip install matplotlib`` (or ``kvstack[plot]``) enables ``--plot``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kvstack.errors import InputError
from kvstack.plan.planner import Storage, plan_with
from kvstack.plan.spec import ArchSpec
from kvstack.plan.units import format_context

DEFAULT_CONTEXTS = tuple(int(2 ** (10 + i / 4)) for i in range(41))  # 1K .. 1M, 4 per octave


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError(
            "--plot needs matplotlib: pip install matplotlib (or kvstack[plot])"
        ) from None
    return plt


def plot_cache_curves(
    series: Sequence[tuple[str, ArchSpec, Storage]],
    path: str | Path,
    batch: int = 1,
    contexts: Sequence[int] = DEFAULT_CONTEXTS,
    budgets: Sequence[tuple[str, int]] = (),
    title: str | None = None,
    dashed: Sequence[str] = (),
) -> Path:
    """Write a PNG of cache GiB vs context for each ``(label, spec, storage)``; returns the path.

    ``budgets`` draws horizontal lines (e.g. memory left for the cache on a device);
    series whose label is in ``dashed`` are drawn dashed (alternatives to the main line-up).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=120)
    for label, spec, storage in series:
        ys = [plan_with(spec, c, batch, storage).total_bytes / 2**30 for c in contexts]
        style = "--" if label in dashed else "-"
        ax.plot(contexts, ys, style, label=label, linewidth=1.8)
    for label, nbytes in budgets:
        ax.axhline(nbytes / 2**30, linestyle="--", color="grey", linewidth=1)
        ax.annotate(
            label,
            (contexts[0], nbytes / 2**30),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
            color="grey",
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ticks = [
        c for c in (2**10, 2**12, 2**14, 2**16, 2**18, 2**20) if contexts[0] <= c <= contexts[-1]
    ]
    ax.set_xticks(ticks, [format_context(c) for c in ticks])
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel(f"KV cache, GiB (batch {batch})")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title or "KV cache size vs context")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    out = Path(path)
    if out.parent and not out.parent.exists():
        raise InputError(f"--plot: folder {str(out.parent)!r} does not exist")
    fig.savefig(out)
    plt.close(fig)
    return out
