"""``colzstd``: packed integer codes coded by zstd column by column - fast entropy coding.

A block of packed codes ``uint8 [rows, width]`` is optionally delta-coded along rows (tokens)
byte by byte, modulo 256 (``seq``), then transposed so that each byte column - the same
channels of consecutive tokens - lies contiguous, and compressed by zstd (LZ matching, then
Huffman-coded literals and FSE-coded sequences). Columns are where the statistics are: the
same channels of neighbouring tokens, a layout in which zstd's per-block Huffman tables fit.

Why bytes and not symbols: the codes stay packed (no unpacking or repacking on either side),
and a byte of int4 codes is a pair of adjacent channels, whose joint statistics Huffman codes
directly. The byte-wise delta is exactly invertible (a cumulative sum modulo 256); a borrow
from a low code into a high one only makes the high code's difference a little noisier.
On SmolLM2's int4 KV this codes 1.23x below the packed codes at several hundred MB/s per
core, against 1.25x at ~40 MB/s for the per-channel ANS coder (``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import numpy as np

from kvstack.wire import zstdio
from kvstack.wire.deps import require

DELTAS = ("none", "seq")
LEVEL = 1  # zstd level: higher levels measured no smaller on KV codes, and several times slower


def forward(block: np.ndarray, delta: str) -> np.ndarray:
    """``[rows, width]`` packed bytes -> ``[width, rows]`` column-major, delta-coded along rows."""
    cols = np.ascontiguousarray(block.T)
    if delta == "seq" and cols.shape[1] > 1:
        out = np.empty_like(cols)
        out[:, 0] = cols[:, 0]
        np.subtract(cols[:, 1:], cols[:, :-1], out=out[:, 1:])  # uint8: wraps modulo 256
        return out
    return cols


def inverse(cols: np.ndarray, delta: str) -> np.ndarray:
    """Undo :func:`forward`: ``[width, rows]`` -> ``[rows, width]`` packed bytes."""
    if delta == "seq" and cols.shape[1] > 1:
        cols = np.cumsum(cols, axis=1, dtype=np.uint8)
    return np.ascontiguousarray(cols.T)


def encode(block: np.ndarray, delta: str, level: int = LEVEL) -> bytes:
    zstandard = require("zstandard")
    return zstandard.ZstdCompressor(level=level).compress(forward(block, delta).tobytes())


def decode(payload: bytes | memoryview, rows: int, width: int, delta: str) -> np.ndarray:
    """The block's packed bytes, flat (CacheFormatError if the payload is not what the header says)."""
    raw = zstdio.decompress(payload, rows * width, "colzstd block")
    return inverse(np.frombuffer(raw, np.uint8).reshape(width, rows), delta).reshape(-1)


def choose_delta(packed: np.ndarray, chunk_rows: int, delta: str) -> str:
    """``delta`` itself, or for ``auto`` the transform that codes up to 4 chunks spread over the
    array smallest (measured by coding them: zstd is fast enough to just try)."""
    if delta != "auto":
        return delta
    starts = list(range(0, packed.shape[0], chunk_rows))
    sample = starts[:: -(-len(starts) // 4)] if starts else []
    sizes = {m: sum(len(encode(packed[s : s + chunk_rows], m)) for s in sample) for m in DELTAS}
    return min(DELTAS, key=lambda m: (sizes[m], m != "none"))
