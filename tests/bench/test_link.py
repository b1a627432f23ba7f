"""The benchmark link: a real `kvstack serve` process on loopback, bytes counted, rate enforced."""

from __future__ import annotations

import hashlib

import pytest
import torch

from kvstack import wire
from kvstack.bench.link import LoopbackLink, gbits
from kvstack.errors import InputError
from kvstack.transport.loadtest import synthetic_caches


@pytest.fixture(scope="module")
def link():
    with LoopbackLink() as running:
        yield running


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A ~2 MB int8 cache saved to a file: (path, its bytes)."""
    torch.set_num_threads(1)
    cache = synthetic_caches(1, tokens=2048, layers=4, heads=2, dim=64, recipe="int8")[0]
    path = tmp_path_factory.mktemp("link") / "cache.kvw"
    wire.save(cache, path)
    return path, path.read_bytes()


def test_bytes_received_equal_the_file_size(link, saved):
    path, data = saved
    key = link.push(data)
    got = bytearray()
    transfer = link.pull(key, None, got.extend)
    assert transfer.bytes == path.stat().st_size == len(got)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    dec = wire.StreamDecoder()
    link.pull(key, gbits(0.5), dec.feed)  # shaped: same bytes, a cache that decodes
    assert dec.finish().context_length == 2048


def test_the_shaper_holds_the_set_rate(link, saved):
    _, data = saved
    key = link.push(data)
    rate = 4e6  # bytes/s: ~0.5 s for 2 MB, far below what loopback does unshaped
    shaped = link.pull(key, rate)
    free = link.pull(key, None)
    # the bucket starts with a 64 KiB burst, so (size - burst) bytes take at least (size - burst) / rate;
    # slower is possible on a loaded machine, but not by half
    assert shaped.seconds >= (len(data) - (64 << 10)) / rate
    assert shaped.rate <= rate * len(data) / (len(data) - (64 << 10)) * 1.01
    assert shaped.rate >= 0.5 * rate
    assert free.rate > 2 * rate  # without the shaper the same pull is much faster: the bucket is what limits


def test_pieces_are_released_in_slices_no_larger_than_the_burst(link, saved):
    _, data = saved
    key = link.push(data)
    sizes = []
    link.pull(key, 1e8, lambda piece: sizes.append(len(piece)))
    assert sum(sizes) == len(data) and max(sizes) <= 64 << 10


def test_bad_rate_is_an_input_error(link):
    with pytest.raises(InputError, match="positive"):
        link.pull("0" * 8 + "/" + "0" * 64, 0.0)
