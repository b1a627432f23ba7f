"""colzstd (zstd over column-major packed codes): exact inversion, the delta it picks, its errors,
and that files of format version 1 (written before it existed) still read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstack import wire
from kvstack.errors import CacheFormatError, InputError
from kvstack.wire import colzstd

DATA = Path(__file__).parent / "data"


@settings(max_examples=80, deadline=None)
@given(rows=st.integers(0, 40), width=st.integers(1, 12), delta=st.sampled_from(colzstd.DELTAS),
       seed=st.integers(0, 999))
def test_blocks_invert_exactly(rows, width, delta, seed):
    block = np.random.default_rng(seed).integers(0, 256, (rows, width)).astype(np.uint8)
    cols = colzstd.forward(block, delta)
    assert cols.shape == (width, rows) and cols.flags.c_contiguous
    assert np.array_equal(colzstd.inverse(cols, delta), block)
    payload = colzstd.encode(block, delta)
    assert np.array_equal(colzstd.decode(payload, rows, width, delta), block.reshape(-1))


def test_seq_delta_is_bytewise_modulo_256_along_tokens():
    block = np.array([[10, 250], [12, 3], [11, 3]], dtype=np.uint8)
    # column 0: 10, +2, -1 (=255); column 1: 250, 3-250 = 9 (mod 256), 0
    assert colzstd.forward(block, "seq").tolist() == [[10, 2, 255], [250, 9, 0]]


def test_auto_picks_the_delta_that_codes_smaller():
    rng = np.random.default_rng(0)
    drift = np.cumsum(rng.integers(0, 2, (4096, 8)), axis=0).astype(np.uint8)  # slow ramps: deltas are 0/1
    noise = rng.integers(0, 256, (4096, 8)).astype(np.uint8)  # i.i.d.: deltas only add entropy
    for block, want in ((drift, "seq"), (noise, "none")):
        sizes = {m: len(colzstd.encode(block, m)) for m in colzstd.DELTAS}
        assert min(sizes, key=sizes.get) == want
        assert colzstd.choose_delta(block, 1024, "auto") == want


def test_colzstd_is_the_default_and_round_trips_real_caches(wire_caches):
    cache = wire_caches["int4"]
    blob = wire.encode(cache)
    header = wire.StreamDecoder(verify_only=True)
    header.feed(blob)
    codes = [a for a in header.check_complete().arrays if a.bits is not None]
    assert codes and all(a.codec == "colzstd" and a.delta in colzstd.DELTAS for a in codes)
    for delta in ("none", "seq", "auto"):
        assert wire.cache_differences(cache, wire.decode(wire.encode(cache, delta=delta, chunk_rows=13))) == []


def test_anchor_delta_is_refused_for_colzstd():
    with pytest.raises(InputError, match="colzstd takes none, seq or auto"):
        wire.WireOptions(codes="colzstd", delta="anchor")


def test_a_colzstd_block_of_the_wrong_size_is_a_format_error():
    payload = colzstd.encode(np.zeros((10, 4), np.uint8), "none")
    with pytest.raises(CacheFormatError, match="expected 44"):
        colzstd.decode(payload, 11, 4, "none")
    with pytest.raises(CacheFormatError, match="does not decompress"):
        colzstd.decode(b"\x00" * 16, 10, 4, "none")


@pytest.mark.parametrize("name", ("int4", "kivi2"))
def test_version_1_files_still_read(name):
    # written by kvstack at format version 1 (commit 9f38d2e), entropy coded and raw: same cache
    coded, raw = DATA / f"v1_{name}_ans.kvw", DATA / f"v1_{name}_raw.kvw"
    assert coded.read_bytes()[8] == 1 and raw.read_bytes()[8] == 1
    a, b = wire.load(coded), wire.load(raw)
    assert wire.cache_differences(a, b) == [] and a.layers
