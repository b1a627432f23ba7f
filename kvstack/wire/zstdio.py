"""Bounded zstd decompression: the output can never exceed what the header announced.

``ZstdDecompressor.decompress`` allocates the content size a frame *declares* (a 20-byte
frame can declare 2^40 bytes: a raw MemoryError), and ``max_output_size`` only applies to
frames that declare none. Reading through ``stream_reader`` with a read size of one byte more
than expected allocates at most that, whatever the frame says, and tells a frame that holds
more than announced from one that holds exactly that.
"""

from __future__ import annotations

from kvstack.errors import CacheFormatError
from kvstack.wire.deps import require


def decompress(payload: bytes | memoryview, expected: int, what: str) -> bytes:
    """Exactly ``expected`` bytes from the zstd frame ``payload`` (CacheFormatError otherwise)."""
    zstandard = require("zstandard")
    try:
        with zstandard.ZstdDecompressor().stream_reader(payload, read_size=1 << 20) as reader:
            out = reader.read(expected + 1)
            while len(out) <= expected and (more := reader.read(expected + 1 - len(out))):
                out += more
    except zstandard.ZstdError as exc:
        raise CacheFormatError(f"corrupt cache: {what} does not decompress ({exc})") from exc
    if len(out) != expected:
        got = f"more than {expected}" if len(out) > expected else str(len(out))
        raise CacheFormatError(f"corrupt cache: {what} holds {got} bytes, expected {expected}")
    return out
