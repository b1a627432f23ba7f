"""The benchmark link: a real `kvstack serve` process on loopback, bytes counted, rate enforced."""

from __future__ import annotations

import hashlib

import pytest
import torch

from kvstack import wire
from kvstack.errors import InputError
from kvstack.linkbench.link import MIN_BURST, LoopbackLink, burst_bytes, gbits
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
    # the bucket starts with a burst (64 KiB at this rate), so (size - burst) bytes take at least
    # (size - burst) / rate; slower is possible on a loaded machine, but not by half
    assert burst_bytes(rate) == MIN_BURST
    assert shaped.seconds >= (len(data) - MIN_BURST) / rate
    assert shaped.rate <= rate * len(data) / (len(data) - MIN_BURST) * 1.01
    assert shaped.rate >= 0.5 * rate
    assert free.rate > 2 * rate  # without the shaper the same pull is much faster: the bucket is what limits


def test_pieces_are_released_in_slices_no_larger_than_the_burst(link, saved):
    _, data = saved
    key = link.push(data)
    sizes = []
    link.pull(key, 1e8, lambda piece: sizes.append(len(piece)))
    assert burst_bytes(1e8) == 1_000_000  # 10 ms of data at 100 MB/s
    assert sum(sizes) == len(data) and max(sizes) <= 1_000_000
    slow = []
    link.pull(key, 4e6, lambda piece: slow.append(len(piece)))  # 10 ms is 40 KB: the 64 KiB floor holds
    assert sum(slow) == len(data) and max(slow) <= MIN_BURST


def test_bad_rate_is_an_input_error(link):
    with pytest.raises(InputError, match="positive"):
        link.pull("0" * 8 + "/" + "0" * 64, 0.0)
