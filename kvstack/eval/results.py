"""The results file: one JSON object per line, one line per finished cell, appended as cells finish.

Append-only JSON lines make a run resumable: a crash loses at most the line being written.
On reopening, a truncated last line (no newline, not valid JSON) is cut off and its cell is
redone; a bad line *before* the last cannot come from a crash, so it raises
:class:`~kvstack.errors.ResultsError` instead of silently dropping results.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from kvstack.errors import InputError, ResultsError

FORMAT = 1


def cell_key(model: str, seed: int, task: str, length: int, index: int, recipe: str) -> str:
    return json.dumps([model, seed, task, length, index, recipe])


def row_key(row: dict) -> str:
    return cell_key(row["model"], row["seed"], row["task"], row["length"], row["index"], row["recipe"])


def read_rows(path: str | Path) -> tuple[list[dict], bool]:
    """``(rows, truncated)``: every complete row, and whether a partial last line was found."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"results file {path} does not exist; run `kvstack eval --out {path}` first")
    raw = path.read_bytes()
    if path.suffix == ".xz":  # archived results (benchmarks/reports keep theirs compressed)
        import lzma

        try:
            raw = lzma.decompress(raw)
        except lzma.LZMAError as exc:
            raise ResultsError(f"{path} is not a readable .xz file ({exc}); decompress or regenerate it") from exc
    lines = raw.split(b"\n")
    rows, truncated = [], False
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or "recipe" not in row:
                raise ValueError("not a results row")
        except ValueError as exc:
            if number == len(lines):  # the last line, with no newline after it: a write cut short
                truncated = True
                continue
            raise ResultsError(
                f"{path}, line {number}, is not a results row ({exc}); it is not the last line, so this is not "
                "an interrupted write. Delete that line (its cell is then redone) or pass another --out file"
            ) from exc
        rows.append(row)
    return rows, truncated


def repair(path: str | Path) -> int:
    """Cut a truncated last line off ``path`` so appends start on a fresh line; returns bytes removed."""
    path = Path(path)
    if not path.is_file():
        return 0
    raw = path.read_bytes()
    if not raw or raw.endswith(b"\n"):
        return 0
    tail_start = raw.rfind(b"\n") + 1
    try:
        json.loads(raw[tail_start:])
    except ValueError:
        with open(path, "r+b") as f:
            f.truncate(tail_start)
        return len(raw) - tail_start
    with open(path, "ab") as f:  # a complete row missing only its newline
        f.write(b"\n")
    return 0


class ResultsWriter:
    """Appends rows; each row is one write of one line, flushed and synced before the next cell."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.dropped = repair(self.path)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, row: dict) -> None:
        self._file.write(json.dumps({"format": FORMAT, **row}, sort_keys=True) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
