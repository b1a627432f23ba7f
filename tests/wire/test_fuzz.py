"""The decoder under attack: random corruptions, truncations, insertions and hostile headers
(with valid checksums) never crash, hang or over-allocate; they raise CacheFormatError."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from kvstack import wire
from kvstack.errors import CacheFormatError
from kvstack.wire.checksum import crc32c
from kvstack.wire.format import PREAMBLE, Limits

FUZZ = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def streams(wire_caches):
    """Small real streams: KIVI (quant + dense + split), ragged per-head, entropy and zstd coded."""
    return [
        wire.encode(wire_caches["kivi:2,g8,residual=6"], codes="ans", chunk_rows=32),
        wire.encode(wire_caches["snapkv:0.5,window=8,alloc=adakv > int3:axis=channel,g4"], codes="zstd"),
        wire.encode(wire_caches["int4"], codes="range", delta="seq", chunk_rows=40),
        wire.encode(wire_caches["int4:sym,g8"], codes="colzstd", delta="seq", chunk_rows=24),
    ]


def _decode(data: bytes, split: int = 0) -> None:
    limits = Limits(max_total_bytes=64 << 20, max_chunk_bytes=8 << 20)
    pieces = [data] if not split else [data[i : i + split] for i in range(0, len(data), split)]
    wire.decode_stream(pieces, limits=limits)


@FUZZ
@given(data=st.data())
def test_random_byte_corruption_is_rejected(streams, data):
    original = streams[data.draw(st.integers(0, len(streams) - 1))]
    blob = bytearray(original)
    for pos in data.draw(st.sets(st.integers(0, len(blob) - 1), min_size=1, max_size=8)):
        blob[pos] ^= data.draw(st.integers(1, 255))
    with pytest.raises(CacheFormatError):
        _decode(bytes(blob), data.draw(st.sampled_from([0, 1, 7, 4096])))


@FUZZ
@given(data=st.data())
def test_truncation_and_extension_are_rejected(streams, data):
    blob = streams[data.draw(st.integers(0, len(streams) - 1))]
    cut = data.draw(st.integers(0, len(blob) - 1))
    with pytest.raises(CacheFormatError):
        _decode(blob[:cut], data.draw(st.sampled_from([0, 3, 1000])))
    extra = data.draw(st.binary(min_size=1, max_size=64))
    with pytest.raises(CacheFormatError):
        _decode(blob + extra)


@FUZZ
@given(data=st.data())
def test_inserted_or_deleted_bytes_are_rejected(streams, data):
    original = streams[data.draw(st.integers(0, len(streams) - 1))]
    blob = bytearray(original)
    pos = data.draw(st.integers(0, len(blob) - 1))
    if data.draw(st.booleans()):
        blob[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
    else:
        del blob[pos : pos + data.draw(st.integers(1, 16))]
    assume(bytes(blob) != original)  # inserting a copy of the neighbouring bytes can change nothing
    with pytest.raises(CacheFormatError):
        _decode(bytes(blob))


@FUZZ
@given(junk=st.binary(max_size=2048))
def test_arbitrary_bytes_are_rejected(junk):
    with pytest.raises(CacheFormatError):
        _decode(junk)


def _split(blob: bytes) -> tuple[dict, bytes]:
    _, _, _, n = PREAMBLE.unpack_from(blob)
    header = json.loads(blob[PREAMBLE.size : PREAMBLE.size + n])
    return header, blob[PREAMBLE.size + n + 4 :]


def _join(header: dict, frames: bytes) -> bytes:
    body = json.dumps(header).encode()
    return PREAMBLE.pack(b"KVSTACK\x1a", 1, 0, len(body)) + body + struct.pack("<I", crc32c(body)) + frames


# Values that break sizes, types and references while the CRC still matches.
HOSTILE = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63), st.floats(allow_nan=True),
    st.text(max_size=8), st.lists(st.integers(-5, 1 << 40), max_size=3), st.dictionaries(st.text(max_size=4),
                                                                                            st.integers(), max_size=2),
)


def _paths(obj, prefix=()):
    """Every (path, value) inside a JSON value."""
    yield prefix, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


@FUZZ
@given(data=st.data())
def test_hostile_headers_with_valid_checksums_are_rejected(streams, data):
    header, frames = _split(streams[data.draw(st.integers(0, len(streams) - 1))])
    paths = [p for p, _ in _paths(header) if p and p[0] != "stats"]
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        node = header
        try:
            for key in path[:-1]:
                node = node[key]
            old = node[path[-1]]
            new = data.draw(HOSTILE)
            if new == old and type(new) is type(old):
                continue
            node[path[-1]] = new
        except (KeyError, IndexError, TypeError):
            continue
    try:
        _decode(_join(header, frames))
    except CacheFormatError:
        return
    # The only mutations that may decode are ones that changed nothing a reader checks (names, recipe text).


def test_a_huge_announced_shape_fails_before_allocating(streams):
    header, frames = _split(streams[0])
    header["arrays"][0]["shape"] = [1 << 33]
    header["chunks"] = [c for c in header["chunks"] if c[0] != 0]
    with pytest.raises(CacheFormatError, match="limit"):
        _decode(_join(header, frames))


def test_swapped_frames_are_rejected(streams):
    header, frames = _split(streams[2])
    # first two frames swapped: each keeps a valid CRC, but arrives out of order
    n0 = struct.unpack_from("<III", frames, 0)[1]
    f0, rest = frames[: 12 + n0], frames[12 + n0 :]
    n1 = struct.unpack_from("<III", rest, 0)[1]
    f1, rest = rest[: 12 + n1], rest[12 + n1 :]
    with pytest.raises(CacheFormatError, match="frame"):
        _decode(_join(header, f1 + f0 + rest))
