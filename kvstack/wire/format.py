"""The byte layout of a kvstack wire stream, and the limits a reader enforces before allocating.

A stream is::

    preamble   MAGIC (8 bytes) | version u16 | flags u16 | header_len u32
    header     header_len bytes of UTF-8 JSON | crc32c(header) u32
    frames     chunk_index u32 | payload_len u32 | crc32c(payload) u32 | payload   (one per chunk, in order)
    end        END_INDEX u32 | 8 u32 | crc32c u32 | total stream bytes before the end frame, u64

All integers are little-endian. The header describes every array (dtype, shape, codec) and
lists the chunks in the order their frames follow, so a receiver can check every size before
it allocates anything and can finish a layer as soon as that layer's frames have arrived.
The end frame makes a stream cut exactly at a frame boundary detectable as truncated.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# The element types a stream may carry are defined in the storage layer, whose containers name
# their output dtypes with the same table; named here too for code that reads this layout.
from kvstack.rows.encoding import DTYPE_NAMES, DTYPES, dtype_name  # noqa: F401

MAGIC = b"KVSTACK\x1a"
# 2 added the ``colzstd`` codec for packed codes; streams are written as 2, and 1 is still read.
# A kvstack that reads only 1 refuses a 2 with a message to use a newer kvstack or re-save.
VERSION = 2
READABLE_VERSIONS = (1, 2)
PREAMBLE = struct.Struct("<8sHHI")
FRAME = struct.Struct("<III")
END_INDEX = 0xFFFFFFFF
END_PAYLOAD = struct.Struct("<Q")


@dataclass(frozen=True)
class Limits:
    """What a reader accepts. Everything is checked against these before memory is allocated,
    so a hostile or corrupt stream fails with CacheFormatError instead of exhausting memory."""

    max_header_bytes: int = 64 << 20
    max_chunk_bytes: int = 256 << 20
    max_total_bytes: int = 32 << 30  # decoded tensors, all arrays together
    max_layers: int = 4096
    max_arrays: int = 1 << 20
    max_chunks: int = 1 << 22
    max_rows: int = 1 << 34
    max_width: int = 1 << 20
    max_stream_bytes: int = 64 << 30
    # Widths of rows (a head's vectors) and of packed codes' channels: bounds a Hadamard
    # wrapper's matrix (width^2) and an entropy model's channel-group count (at most one per channel).
    max_head_dim: int = 4096
    # Decoded bytes per stream byte, checked as the stream arrives (declared sizes before a
    # chunk is decoded), beyond a first ``inflation_allowance`` bytes: a small file cannot make
    # the reader allocate gigabytes, whatever it declares or really inflates to. Real caches
    # decode to 1-10x their stream; only constant data compresses further.
    max_inflation: int = 256
    inflation_allowance: int = 64 << 20
    # Entries (values, list items, keys) in each free-form JSON field (stats, layer meta).
    max_json_items: int = 1 << 16
