"""The wire format: a compressed KV cache as a versioned, checksummed, chunked byte stream.

    from kvstack import wire
    wire.save(cache, "doc.kvw")                  # atomic; entropy-coded codes by default
    cache = wire.load("doc.kvw", model)          # ModelError if another model built it
    for piece in wire.encode_stream(cache): ...  # bytes pieces, header first
    cache = wire.decode_stream(pieces)           # any split of the same bytes

The layout is in :mod:`kvstack.wire.format` and ``docs/wire.md``; reading never unpickles.
New Encoded classes plug in with :func:`register_encoding`.
"""

from __future__ import annotations

from kvstack.wire.compare import cache_differences
from kvstack.wire.encodings import Parts, Symbols, register_encoding
from kvstack.wire.files import load, read_header, save
from kvstack.wire.format import Limits
from kvstack.wire.hashing import prefix_hash, tokenizer_hash
from kvstack.wire.reader import StreamDecoder, decode, decode_stream, iter_layers
from kvstack.wire.stats import byte_breakdown
from kvstack.wire.writer import WireOptions, encode, encode_stream

__all__ = [
    "Limits",
    "Parts",
    "StreamDecoder",
    "Symbols",
    "WireOptions",
    "byte_breakdown",
    "cache_differences",
    "decode",
    "decode_stream",
    "encode",
    "encode_stream",
    "iter_layers",
    "load",
    "prefix_hash",
    "read_header",
    "register_encoding",
    "save",
    "tokenizer_hash",
]
