"""The results file survives interruptions: a truncated last line is dropped and redone, a
corrupt line before it is refused (never silently lost)."""

import json

import pytest

from kvstack.errors import InputError, ResultsError
from kvstack.eval.results import ResultsWriter, read_rows, repair, row_key


def row(i: int) -> dict:
    return {"model": "m", "seed": 0, "task": "qa", "length": 512, "index": i, "recipe": "int8", "status": "ok"}


def write(path, rows, tail: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail, encoding="utf-8")


def test_writer_appends_one_line_per_row_and_reads_back(tmp_path):
    path = tmp_path / "r.jsonl"
    with ResultsWriter(path) as w:
        for i in range(3):
            w.write(row(i))
    rows, truncated = read_rows(path)
    assert [r["index"] for r in rows] == [0, 1, 2] and not truncated
    assert len(set(map(row_key, rows))) == 3


def test_truncated_last_line_is_ignored_then_cut_before_appending(tmp_path):
    path = tmp_path / "r.jsonl"
    write(path, [row(0), row(1)], tail=json.dumps(row(2))[:25])
    rows, truncated = read_rows(path)
    assert [r["index"] for r in rows] == [0, 1] and truncated
    with ResultsWriter(path) as w:
        assert w.dropped == 25
        w.write(row(2))
    rows, truncated = read_rows(path)
    assert [r["index"] for r in rows] == [0, 1, 2] and not truncated


def test_complete_last_row_without_newline_is_kept(tmp_path):
    path = tmp_path / "r.jsonl"
    write(path, [row(0)], tail=json.dumps(row(1)))
    assert repair(path) == 0
    assert [r["index"] for r in read_rows(path)[0]] == [0, 1]
    assert path.read_text().endswith("\n")


def test_corrupt_line_in_the_middle_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(row(0)) + "\n{broken\n" + json.dumps(row(2)) + "\n")
    before = path.read_bytes()
    with pytest.raises(ResultsError, match="line 2.*Delete that line"):
        read_rows(path)
    assert path.read_bytes() == before


def test_missing_file_says_how_to_make_it(tmp_path):
    with pytest.raises(InputError, match="kvstack eval --out"):
        read_rows(tmp_path / "none.jsonl")


def test_xz_archive_reads_like_the_plain_file(tmp_path):
    import lzma

    plain = tmp_path / "r.jsonl"
    with ResultsWriter(plain) as w:
        for i in range(3):
            w.write({"recipe": "int8", "index": i, "contains": i % 2})
    packed = tmp_path / "r.jsonl.xz"
    packed.write_bytes(lzma.compress(plain.read_bytes()))
    assert read_rows(packed) == read_rows(plain)
    assert [r["index"] for r in read_rows(packed)[0]] == [0, 1, 2]


def test_corrupt_xz_archive_is_a_results_error(tmp_path):
    bad = tmp_path / "r.jsonl.xz"
    bad.write_bytes(b"\xfd7zXZ\x00 not really xz")
    with pytest.raises(ResultsError, match="not a readable .xz file"):
        read_rows(bad)
