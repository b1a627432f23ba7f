"""Text helpers and the default model shared by the ``kvstack`` command and its subcommand modules.

Why a module of its own: ``kvstack/cli.py`` imports each subcommand's CLI module, so those modules
cannot import ``cli.py`` back for these helpers without an import cycle.
"""

from __future__ import annotations

DEFAULT_MODEL = "smollm2-135m"


def table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    """A plain aligned text table (no dependency, copy-pastes into Markdown-ish notes)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths)), line]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def fmt_bytes(n: float) -> str:
    """``512 B``, ``4.44 MiB``: binary units, two decimals past bytes."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"
