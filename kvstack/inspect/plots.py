"""PNG heatmaps of an inspect report (matplotlib, Agg backend, imported lazily).

Four figures, each answering one question: are adjacent layers alike (similarity), how
many directions do keys/values need (rank), which channels are outliers (channels), and
which heads park attention on the first tokens (sinks).
"""

from __future__ import annotations

from pathlib import Path

import torch

from kvstack.errors import InputError
from kvstack.inspect.report import ModelReport


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("PNG output needs matplotlib: pip install matplotlib (or kvstack[plot])") from None
    return plt


def _title(report: ModelReport, what: str) -> str:
    name = f"{report.model}: " if report.model else ""
    return f"{name}{what} ({report.context_tokens} tokens)"


def plot_similarity(report: ModelReport, path: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), dpi=110)
    for ax, mat, label in ((axes[0], report.cos_k, "keys"), (axes[1], report.cos_v, "values")):
        im = ax.imshow(mat.numpy(), cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_title(f"{label}: mean cosine, same head and token")
        ax.set_xlabel("layer")
        ax.set_ylabel("layer")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(_title(report, "layer-to-layer similarity (MiniCache merges where this is near 1)"))
    return _save(fig, plt, path)


def plot_rank(report: ModelReport, path: Path) -> Path:
    plt = _pyplot()
    cols, labels = [], []
    parts = [("K", "k_rank"), ("K pre-RoPE", "kpre_rank"), ("V", "v_rank")]
    for label, attr in parts:
        if getattr(report.layers[0], attr) is None:
            continue
        for j, e in enumerate(report.energies):
            cols.append([getattr(s, attr)[j] for s in report.layers])
            labels.append(f"{label} {e:.0%}")
    data = torch.tensor(cols, dtype=torch.float64).T  # [L, columns]
    fig, ax = plt.subplots(figsize=(1.0 * len(labels) + 2.5, 0.26 * len(report.layers) + 1.8), dpi=110)
    im = ax.imshow(data.numpy() / report.head_dim, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            value = float(data[i, j])
            color = "white" if value < 0.6 * report.head_dim else "black"
            ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=6, color=color)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("layer")
    ax.set_title(_title(report, f"directions per head for an energy share (of {report.head_dim})"), fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of head_dim")
    return _save(fig, plt, path)


def plot_channels(report: ModelReport, path: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(2, 1, figsize=(11, 7), dpi=110)
    for ax, mat, label in ((axes[0], report.key_channels, "keys"), (axes[1], report.value_channels, "values")):
        im = ax.imshow(mat.clamp_min(1e-3).log10().numpy(), cmap="magma", aspect="auto", vmin=-1, vmax=1.5)
        ax.set_title(f"{label}: mean |x| per channel / layer median (log10); heads of {report.head_dim} channels")
        ax.set_ylabel("layer")
        ax.set_xlabel("head x channel")
        for h in range(1, report.kv_heads):
            ax.axvline(h * report.head_dim - 0.5, color="white", linewidth=0.6)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(_title(report, "channel outliers (bright columns: quantize per channel)"))
    return _save(fig, plt, path)


def plot_sinks(report: ModelReport, path: Path) -> Path | None:
    if report.sink_heads is None:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 0.22 * len(report.layers) + 2), dpi=110)
    im = ax.imshow(report.sink_heads.numpy(), cmap="inferno", vmin=0, vmax=1, aspect="auto")
    ax.set_xlabel("query head")
    ax.set_ylabel("layer")
    ax.set_title(_title(report, f"attention share of the first {report.sink_tokens} tokens"), fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, plt, path)


def _save(fig, plt, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_plots(report: ModelReport, out_dir: str | Path, prefix: str = "inspect_") -> list[Path]:
    """Write every heatmap as ``<out_dir>/<prefix><what>.png``; returns the paths written."""
    out = Path(out_dir)
    written = [
        plot_similarity(report, out / f"{prefix}similarity.png"),
        plot_rank(report, out / f"{prefix}rank.png"),
        plot_channels(report, out / f"{prefix}channels.png"),
        plot_sinks(report, out / f"{prefix}sinks.png"),
    ]
    return [p for p in written if p is not None]
