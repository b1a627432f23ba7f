"""The hostile-file corpus of issue 19, generated (never committed as binaries).

Each crafter takes valid wire streams built by the real writer and returns bytes an attacker
could send: every checksum valid, so only the reader's limits and decode checks stand between
the file and the reader's memory or CPU. ``corpus(streams)`` is the whole regression corpus;
``tests/wire/test_hostile.py`` loads each file and ``tests/transport/test_hardening.py``
uploads each one to a live server. Run as a script it writes the files to a directory
(``python tests/wire/crafted.py OUT``) for probing other readers by hand.
"""

from __future__ import annotations

import json
import struct
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from kvstack.kv import DenseRows
from kvstack.rows.rotate import HadamardRows
from kvstack.wire.checksum import crc32c
from kvstack.wire.format import END_INDEX, END_PAYLOAD, FRAME, MAGIC, PREAMBLE, VERSION


@dataclass
class Stream:
    """A stream taken apart: its header (JSON) and one payload per chunk, in order."""

    header: dict
    payloads: list[bytes]
    raw: dict[str, str] | None = None  # placeholder string -> JSON text put in its place (nesting json can't dump)

    @classmethod
    def parse(cls, blob: bytes) -> Stream:
        _, _, _, n = PREAMBLE.unpack_from(blob)
        header = json.loads(blob[PREAMBLE.size : PREAMBLE.size + n])
        pos, payloads = PREAMBLE.size + n + 4, []
        while True:
            index, length, _ = FRAME.unpack_from(blob, pos)
            if index == END_INDEX:
                return cls(header, payloads)
            payloads.append(blob[pos + FRAME.size : pos + FRAME.size + length])
            pos += FRAME.size + length

    def bytes(self) -> bytes:
        """Re-frame with valid checksums and a valid end frame."""
        text = json.dumps(self.header)
        for mark, raw in (self.raw or {}).items():
            text = text.replace(json.dumps(mark), raw)
        body = text.encode()
        out = bytearray(PREAMBLE.pack(MAGIC, VERSION, 0, len(body)) + body + struct.pack("<I", crc32c(body)))
        for i, p in enumerate(self.payloads):
            out += FRAME.pack(i, len(p), crc32c(p)) + p
        end = END_PAYLOAD.pack(len(out))
        return bytes(out + FRAME.pack(END_INDEX, len(end), crc32c(end)) + end)

    def chunk_of(self, codec: str) -> int:
        """Index of the first chunk whose array uses ``codec``."""
        arrays = self.header["arrays"]
        return next(i for i, (a, _, _) in enumerate(self.header["chunks"]) if arrays[a]["codec"] == codec)


def zstd_frame_declaring(size: int, data: bytes = b"\0" * 16) -> bytes:
    """A zstd frame whose header declares ``size`` content bytes, holding ``data`` (raw block)."""
    head = struct.pack("<IBB", 0xFD2FB528, 0xC0, 0x58) + struct.pack("<Q", size)  # 8-byte content size
    return head + ((len(data) << 3) | 1).to_bytes(3, "little") + data


def declared_bomb(blob: bytes, codec: str, size: int) -> bytes:
    """A ``codec`` (zstd/colzstd) chunk replaced by a 30-byte frame declaring ``size`` bytes."""
    s = Stream.parse(blob)
    s.payloads[s.chunk_of(codec)] = zstd_frame_declaring(size)
    return s.bytes()


def inflating_context(blob: bytes, tokens: int, chunk_rows: int = 1 << 24) -> bytes:
    """The context ids replaced by ``tokens`` zero ids that really decode (zstd of zeros):
    4 GiB from about 130 KB at ``tokens=2**30``."""
    import zstandard

    s = Stream.parse(blob)
    h = s.header
    ctx = h["context_ids"]
    h["arrays"][ctx].update(shape=[tokens], dtype="int32", codec="zstd")
    h["context_tokens"] = tokens
    old = [i for i, (a, _, _) in enumerate(h["chunks"]) if a == ctx]
    first = old[0]
    payloads = [p for i, p in enumerate(s.payloads) if i not in old]
    chunks = [c for i, c in enumerate(h["chunks"]) if i not in old]
    zero = zstandard.ZstdCompressor(level=1).compress(bytes(4 * chunk_rows))
    new = [[ctx, r, min(r + chunk_rows, tokens)] for r in range(0, tokens, chunk_rows)]
    tail = tokens % chunk_rows
    last = zstandard.ZstdCompressor(level=1).compress(bytes(4 * tail)) if tail else zero
    h["chunks"] = chunks[:first] + new + chunks[first:]
    s.payloads = payloads[:first] + [zero] * (len(new) - 1) + [last] + payloads[first:]
    return s.bytes()


def entropy_groups(blob: bytes, dim: int) -> bytes:
    """An ans/range code array claiming ``dim`` channels with one model group per channel."""
    import base64

    s = Stream.parse(blob)
    i = s.chunk_of("ans") if any(a["codec"] == "ans" for a in s.header["arrays"]) else s.chunk_of("range")
    a = s.header["arrays"][s.header["chunks"][i][0]]
    bits = a["bits"]
    from kvstack.rows.pack import packed_width

    a.update(dim=dim, shape=[a["shape"][0], packed_width(dim, bits)])
    a["model"] = {"width": 1, "freq": base64.b64encode(b"\1\0" * dim * (1 << bits)).decode()}
    return s.bytes()


def hadamard_width(cache, width: int) -> bytes:
    """A real cache whose layer-0 keys are a Hadamard wrapper ``width`` wide (decode would build
    a width x width matrix)."""
    from kvstack.wire import encode

    layer = cache.layers[0]
    n = layer.keys.shape[0]
    keys = HadamardRows(DenseRows(torch.zeros(n, width, dtype=torch.float32)), 0, torch.float32)
    layers = [replace(layer, keys=keys, values=DenseRows(torch.zeros(n, width)))] + list(cache.layers[1:])
    return encode(replace(cache, layers=layers), codes="raw", tensors="zstd")


def with_header(blob: bytes, **fields) -> bytes:
    s = Stream.parse(blob)
    s.header.update(fields)
    return s.bytes()


def deeply_nested_stats(blob: bytes, levels: int) -> bytes:
    """``stats`` holding a list nested ``levels`` deep."""
    s = Stream.parse(blob)
    s.header["stats"] = {"x": "@deep@"}
    s.raw = {"@deep@": "[" * levels + "]" * levels}
    return s.bytes()


def undecodable(blob: bytes, codec: str = "colzstd") -> bytes:
    """A ``codec`` chunk replaced by bytes that are no zstd frame, checksum recomputed."""
    s = Stream.parse(blob)
    s.payloads[s.chunk_of(codec)] = b"\x28\xb5\x2f\xfd" + b"\xff" * 40
    return s.bytes()


def zero_row_layer(blob: bytes) -> bytes:
    """Layer 0's per-head lengths set to zero while its arrays still hold rows: structure and
    CRCs check out, the layer does not build."""
    s = Stream.parse(blob)
    s.header["layers"][0]["lengths"] = [0] * len(s.header["layers"][0]["lengths"])
    return s.bytes()


def huge_header_length(blob: bytes) -> bytes:
    """A preamble announcing a 2 GiB header."""
    return PREAMBLE.pack(MAGIC, VERSION, 0, (2 << 30) - 1) + blob[PREAMBLE.size :]


def corpus(int4: bytes, ans: bytes, cache) -> dict[str, bytes]:
    """Every crafted file, by name: ``int4`` a colzstd/zstd stream, ``ans`` an ans-coded stream,
    ``cache`` the KVCache behind them (for re-encoded variants)."""
    return {
        "zstd_declares_2^40": declared_bomb(int4, "zstd", 1 << 40),
        "colzstd_declares_2^36": declared_bomb(int4, "colzstd", 1 << 36),
        "context_inflates_to_4GiB": inflating_context(int4, 1 << 30),
        "entropy_2^18_groups": entropy_groups(ans, 1 << 18),
        "hadamard_2^13_wide": hadamard_width(cache, 1 << 13),
        "stats_10^6_entries": with_header(int4, stats={"x": list(range(1_000_000))}),
        "stats_nested_100": deeply_nested_stats(int4, 100),
        "stats_nested_100000": deeply_nested_stats(int4, 100_000),
        "header_claims_2GiB": huge_header_length(int4),
        "colzstd_undecodable": undecodable(int4),
        "zero_row_layer": zero_row_layer(int4),
    }


def main(out: str) -> None:
    """Write the corpus, built from the tiny test model's caches, to directory ``out``."""
    sys.path.insert(0, str(Path(__file__).parent))
    from wire_helpers import tiny_llama

    import kvstack
    from kvstack import wire

    model = tiny_llama()
    cache = kvstack.compress(model, torch.randint(3, 128, (48,), generator=torch.Generator().manual_seed(5)), "int4")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    for name, data in corpus(wire.encode(cache), wire.encode(cache, codes="ans"), cache).items():
        (root / f"{name}.kvw").write_bytes(data)
        print(f"{root / name}.kvw  {len(data)} bytes")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "crafted")
