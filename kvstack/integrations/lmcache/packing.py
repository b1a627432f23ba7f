"""Entropy coding of what an LMCache adapter is asked to store, to exactly the bytes it needs.

The ``kvstack`` serializer writes fixed-size frames of packed integer codes (LMCache 0.5.6 needs
a size known in advance); the ``plugin`` adapter (:mod:`.adapter`) then codes each frame's code
arrays with kvstack's column-wise zstd (:mod:`kvstack.wire.colzstd`: per byte column, optionally
delta-coded along tokens - whichever is smaller for that array) and keeps scales and the frame's
header as they are. Any other buffer (raw KV, another serializer's output) is zstd-coded whole.
Both are lossless: :func:`unpack` gives back the very bytes :func:`pack` was given.

Blob (little-endian)::

    magic b"KVLZ" | version u16 | sections u16 | original bytes u32
    table   per section: codec u8 (0 raw, 1 colzstd, 2 colzstd+seq delta, 3 zstd) | 0 u8 | 0 u16 |
            original bytes u32 | stored bytes u32 | row width u32
    data    the sections' stored bytes, in order
"""

from __future__ import annotations

import struct

import numpy as np

from kvstack.errors import CacheFormatError
from kvstack.integrations.lmcache.chunk_codec import ENTRY, HEADER, KIND_CODES, MAGIC
from kvstack.wire import colzstd, zstdio
from kvstack.wire.deps import require

BLOB_MAGIC = b"KVLZ"
VERSION = 1
TOP = struct.Struct("<4sHHI")
SECTION = struct.Struct("<BBHIII")
RAW, COLZSTD, COLZSTD_SEQ, ZSTD = 0, 1, 2, 3
MAX_SECTIONS = 0xFFFF


def _frame_sections(data: np.ndarray) -> list[tuple[int, int, int]] | None:
    """``(offset, bytes, row width or 0)`` of a kvstack frame's parts, or None if ``data`` is not one."""
    if data.size < HEADER.size or data[:4].tobytes() != MAGIC:
        return None
    _, _, n, _, payload = HEADER.unpack(data[: HEADER.size].tobytes())
    table_end = HEADER.size + ENTRY.size * n
    if table_end + payload > data.size or payload < 0:
        return None
    sections = [(0, table_end, 0)]
    offset = table_end
    for i in range(n):
        kind, _bits, _, width, nbytes = ENTRY.unpack_from(data, HEADER.size + ENTRY.size * i)
        coded = kind == KIND_CODES and width > 0 and nbytes % width == 0
        sections.append((offset, nbytes, width if coded else 0))
        offset += nbytes
    return sections if offset == table_end + payload else None


def pack(buffer: bytes | memoryview | np.ndarray) -> bytes:
    """Losslessly code ``buffer`` (a kvstack frame's codes column by column; anything else with zstd)."""
    zstandard = require("zstandard")
    data = np.frombuffer(buffer, dtype=np.uint8) if not isinstance(buffer, np.ndarray) else buffer.reshape(-1)
    sections = _frame_sections(data)
    table, blobs = [], []
    if sections is None or len(sections) > MAX_SECTIONS:
        blob = zstandard.ZstdCompressor(level=colzstd.LEVEL).compress(data.tobytes())
        table.append((ZSTD, data.size, len(blob), 0))
        blobs.append(blob)
    else:
        for offset, nbytes, width in sections:
            part = data[offset : offset + nbytes]
            if not width:
                table.append((RAW, nbytes, nbytes, 0))
                blobs.append(part.tobytes())
                continue
            block = part.reshape(nbytes // width, width)
            plain, seq = colzstd.encode(block, "none"), colzstd.encode(block, "seq")
            codec, blob = (COLZSTD, plain) if len(plain) <= len(seq) else (COLZSTD_SEQ, seq)
            if len(blob) >= nbytes:
                codec, blob = RAW, part.tobytes()
            table.append((codec, nbytes, len(blob), width))
            blobs.append(blob)
    head = TOP.pack(BLOB_MAGIC, VERSION, len(table), data.size)
    return b"".join([head, *(SECTION.pack(c, 0, 0, n, s, w) for c, n, s, w in table), *blobs])


def unpacked_size(blob: bytes | memoryview) -> int:
    """Bytes :func:`unpack` will produce (CacheFormatError if ``blob`` is not a packed blob)."""
    if len(blob) < TOP.size:
        raise CacheFormatError(f"kvstack LMCache blob of {len(blob)} bytes: truncated")
    magic, version, _, size = TOP.unpack_from(blob, 0)
    if magic != BLOB_MAGIC or version != VERSION:
        raise CacheFormatError(f"not a kvstack LMCache blob (magic {magic!r}, version {version})")
    return size


def unpack(blob: bytes | memoryview, out: np.ndarray) -> int:
    """Decode ``blob`` into the start of the ``uint8`` array ``out``; returns the bytes written."""
    size = unpacked_size(blob)
    _, _, n, _ = TOP.unpack_from(blob, 0)
    if size > out.size:
        raise CacheFormatError(f"kvstack LMCache blob holds {size} bytes; the load buffer has {out.size}")
    offset, pos = TOP.size + SECTION.size * n, 0
    if len(blob) < offset:
        raise CacheFormatError("kvstack LMCache blob: truncated section table")
    view = memoryview(blob)
    for i in range(n):
        codec, _, _, nbytes, stored, width = SECTION.unpack_from(blob, TOP.size + SECTION.size * i)
        part = view[offset : offset + stored]
        if len(part) != stored or pos + nbytes > size:
            raise CacheFormatError("kvstack LMCache blob: a section runs past the blob or the original size")
        if codec == RAW and stored == nbytes:
            out[pos : pos + nbytes] = np.frombuffer(part, dtype=np.uint8)
        elif codec in (COLZSTD, COLZSTD_SEQ) and width and nbytes % width == 0:
            delta = "seq" if codec == COLZSTD_SEQ else "none"
            out[pos : pos + nbytes] = colzstd.decode(part, nbytes // width, width, delta)
        elif codec == ZSTD:
            out[pos : pos + nbytes] = np.frombuffer(zstdio.decompress(part, nbytes, "zstd section"), np.uint8)
        else:
            raise CacheFormatError(f"kvstack LMCache blob: section {i} has codec {codec} of width {width}")
        offset += stored
        pos += nbytes
    if pos != size or offset != len(blob):
        raise CacheFormatError(f"kvstack LMCache blob: sections give {pos} of {size} bytes")
    return size
