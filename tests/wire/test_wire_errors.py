"""Bad input gets a typed error that says what to do."""

from __future__ import annotations

import json
import struct
from dataclasses import replace

import pytest
import torch
from wire_helpers import tiny_llama

from kvstack import wire
from kvstack.errors import CacheFormatError, InputError, ModelError
from kvstack.kv import KVLayer
from kvstack.wire.checksum import crc32c
from kvstack.wire.format import PREAMBLE, VERSION, Limits


def test_load_with_another_model_raises_model_error_before_decoding(wire_caches, tmp_path):
    path = tmp_path / "c.kvw"
    wire.save(wire_caches["int4"], path)
    other = tiny_llama()
    other.config.rope_theta = 1234.0  # same shapes, different model: another fingerprint
    with pytest.raises(ModelError, match="another model.*compress the context again"):
        wire.load(path, other)


def test_tokenizer_mismatch_raises_model_error(wire_caches, tmp_path):
    class Tok:
        def __init__(self, vocab):
            self.vocab = vocab

        def get_vocab(self):
            return self.vocab

    path = tmp_path / "t.kvw"
    wire.save(wire_caches["int4"], path, tokenizer=Tok({"a": 0, "b": 1}))
    assert wire.read_header(path).tokenizer == wire.tokenizer_hash(Tok({"a": 0, "b": 1}))
    wire.load(path, tokenizer=Tok({"a": 0, "b": 1}))
    with pytest.raises(ModelError, match="another tokenizer"):
        wire.load(path, tokenizer=Tok({"a": 1, "b": 0}))


def test_missing_file_and_directory_targets(wire_caches, tmp_path):
    with pytest.raises(InputError, match="no cache file"):
        wire.load(tmp_path / "absent.kvw")
    with pytest.raises(InputError, match="is a directory"):
        wire.save(wire_caches["int4"], tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        wire.save(wire_caches["int4"], tmp_path / "no" / "such" / "dir.kvw")


def test_truncated_file_raises_cache_format_error(wire_caches, tmp_path):
    path = tmp_path / "c.kvw"
    wire.save(wire_caches["int4"], path)
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(CacheFormatError, match="ended early|end frame"):
        wire.load(path)


def test_crashed_save_leaves_nothing(wire_caches, tmp_path):
    path = tmp_path / "c.kvw"

    def exploding():
        yield b"partial bytes"
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        wire.files.atomic_write(path, exploding())
    assert list(tmp_path.iterdir()) == []
    wire.save(wire_caches["int4"], path)
    before = path.read_bytes()
    with pytest.raises(RuntimeError):
        wire.files.atomic_write(path, exploding())
    assert path.read_bytes() == before  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["c.kvw"]


def test_unknown_encoded_class_raises_input_error(wire_caches):
    class Mystery:
        shape = (96, 16)
        dtype = torch.float32
        nbytes = 0

        def decode(self):
            return torch.zeros(96, 16)

        def select(self, rows):
            return self

    cache = wire_caches["identity"]
    odd = replace(cache, layers=[replace(cache.layers[0], keys=Mystery()), *cache.layers[1:]])
    with pytest.raises(InputError, match="register_encoding"):
        wire.encode(odd)


def test_unstorable_meta_raises_input_error(wire_caches):
    cache = wire_caches["identity"]
    odd = replace(cache, layers=[replace(cache.layers[0], meta={"f": object()}), *cache.layers[1:]])
    with pytest.raises(InputError, match=r"layers.0.meta.f"):
        wire.encode(odd)


def test_tensor_meta_travels_as_an_array(wire_caches):
    cache = wire_caches["int4"]
    layer = replace(cache.layers[0], meta={"scores": torch.arange(6, dtype=torch.float64).reshape(2, 3), "k": (1, 2)})
    odd = replace(cache, layers=[layer, *cache.layers[1:]])
    assert wire.cache_differences(odd, wire.decode(wire.encode(odd))) == []


@pytest.mark.parametrize(
    "options, match",
    [({"codes": "lzma"}, "codes="), ({"tensors": "ans"}, "tensors="), ({"delta": "xor"}, "delta="),
     ({"chunk_rows": 0}, "chunk_rows"), ({"zstd_level": 99}, "zstd")],
)
def test_bad_options_raise_input_error(wire_caches, options, match):
    with pytest.raises(InputError, match=match):
        wire.encode(wire_caches["int4"], **options)


def test_not_a_cache_raises_input_error():
    with pytest.raises(InputError, match="KVCache"):
        wire.encode({"layers": []})


def _rewrite(blob: bytes, edit) -> bytes:
    _, _, _, n = PREAMBLE.unpack_from(blob)
    header = json.loads(blob[PREAMBLE.size : PREAMBLE.size + n])
    edit(header)
    body = json.dumps(header).encode()
    return PREAMBLE.pack(b"KVSTACK\x1a", 1, 0, len(body)) + body + struct.pack("<I", crc32c(body)) + blob[
        PREAMBLE.size + n + 4 :]


def test_future_versions_and_unknown_encodings_say_what_to_do(wire_caches):
    blob = wire.encode(wire_caches["int4"])
    future = bytearray(blob)
    future[8] = VERSION + 1
    with pytest.raises(CacheFormatError, match=f"version {VERSION + 1}.*re-save"):
        wire.decode(bytes(future))
    renamed = _rewrite(blob, lambda h: h["layers"][0]["keys"].update(kind="lowrank9"))
    with pytest.raises(CacheFormatError, match="lowrank9.*Upgrade kvstack"):
        wire.decode(renamed)


def test_tampered_context_ids_are_caught(wire_caches):
    blob = wire.encode(wire_caches["int4"], tensors="raw")
    _, _, _, n = PREAMBLE.unpack_from(blob)
    start = PREAMBLE.size + n + 4
    index, length, _ = struct.unpack_from("<III", blob, start)
    payload = bytearray(blob[start + 12 : start + 12 + length])
    payload[0] ^= 1  # a different first token, with a matching frame CRC
    forged = blob[:start] + struct.pack("<III", index, length, crc32c(payload)) + payload + blob[start + 12 + length :]
    with pytest.raises(CacheFormatError, match="context token ids"):
        wire.decode(forged)


def test_limits_refuse_large_caches_before_allocating(wire_caches):
    blob = wire.encode(wire_caches["identity"])
    with pytest.raises(CacheFormatError, match="over this reader's limit"):
        wire.decode(blob, limits=Limits(max_total_bytes=1000))
    with pytest.raises(CacheFormatError, match="header of"):
        wire.decode(blob, limits=Limits(max_header_bytes=100))


def test_inconsistent_layer_is_a_format_error(wire_caches):
    blob = wire.encode(wire_caches["int4"])
    bad = _rewrite(blob, lambda h: h["layers"][0].update(lengths=[40, 40]))
    with pytest.raises(CacheFormatError, match="layer 0"):
        wire.decode(bad)
    assert isinstance(wire_caches["int4"].layers[0], KVLayer)


def test_a_missing_optional_package_names_the_pip_command(monkeypatch):
    import sys

    from kvstack.errors import MissingDependencyError
    from kvstack.wire.deps import require

    monkeypatch.setitem(sys.modules, "zstandard", None)  # what Python does for a package that is not there
    with pytest.raises(MissingDependencyError, match=r"pip install zstandard==0.25.0.*kvstack\[wire\]"):
        require("zstandard")
    with pytest.raises(MissingDependencyError):
        wire.encode(tiny_cache_for_zstd(), codes="zstd")


def tiny_cache_for_zstd():
    from kvstack.kv import KVCache

    layer = KVLayer.from_dense(torch.zeros(1, 2, 4), torch.zeros(1, 2, 4))
    return KVCache([layer], torch.arange(2, dtype=torch.int32), torch.float32, model_fingerprint="abcdef12")


@pytest.mark.parametrize(
    "meta, width, match",
    [({"seed": -1, "out_dtype": "float32"}, 16, "rotation seed"),
     ({"seed": 3, "out_dtype": "int8"}, 16, "output dtype"),
     ({"seed": 3, "out_dtype": "float32"}, 12, "not a power of two")],
)
def test_rotated_rows_with_bad_header_are_cache_format_errors(meta, width, match):
    from kvstack.kv import DenseRows
    from kvstack.rows import rotate

    with pytest.raises(CacheFormatError, match=match):
        rotate.WIRE.build(meta, {}, {"inner": DenseRows(torch.zeros(4, width))})


def test_rotated_cache_loads_with_its_seed_and_decodes_like_the_saved_one(wire_caches, tmp_path):
    cache = wire_caches["int4:axis=channel,g4,rot,seed=5"]
    path = tmp_path / "rot.kvw"
    wire.save(cache, path)
    back = wire.load(path)
    keys, again = cache.layers[1].keys, back.layers[1].keys
    assert type(again).__name__ == "HadamardRows" and again.seed == 5
    assert torch.equal(again.decode(), keys.decode())
    assert back.nbytes == cache.nbytes
