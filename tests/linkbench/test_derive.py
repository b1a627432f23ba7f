"""Derived cells: TTFT from measured components, by hand and exactly; which cells get shaped for real."""

from __future__ import annotations

import pytest

from kvstack.errors import InputError
from kvstack.linkbench.derive import (
    Components,
    derived_receive,
    derived_ttft,
    should_measure,
    transfer_seconds,
)
from kvstack.linkbench.link import MIN_BURST, burst_bytes


def test_link_bound_cell_by_hand():
    # 4 GiB-ish at 0.1 Gbit/s (12.5 MB/s): the link is far slower than the 9 s receive path;
    # the bucket's burst is 10 ms of data, 125,000 B, released at once
    c = Components(nbytes=4_295_000_000, receive_s=9.0, answer_s=0.25)
    rate = 0.1e9 / 8
    assert burst_bytes(rate) == 125_000
    assert transfer_seconds(c.nbytes, rate) == 4_294_875_000 / 12_500_000 == 343.59
    assert derived_receive(c, rate) == 343.59
    assert derived_ttft(c, rate) == 343.59 + 0.25


def test_receiver_bound_cell_by_hand():
    # the same payload at 10 Gbit/s: 3.4 s of link, but decoding takes 9 s - the receiver sets the pace
    c = Components(nbytes=4_295_000_000, receive_s=9.0, answer_s=0.25)
    assert derived_receive(c, 10e9 / 8) == 9.0
    assert derived_ttft(c, 10e9 / 8) == 9.25


def test_derived_is_exactly_the_components_combined():
    cases = [(10, 0.001, 0.5, 1e3, MIN_BURST), (MIN_BURST, 0.2, 0.1, 1.0, MIN_BURST),
             (123_456_789, 0.37, 1.9, 1.25e8, 1_250_000), (123_456_789, 3.7, 1.9, 1.25e8, 1_250_000)]
    for nbytes, receive, answer, rate, burst in cases:
        assert burst_bytes(rate) == burst
        c = Components(nbytes, receive, answer)
        link = max(nbytes - burst, 0) / rate
        assert derived_receive(c, rate) == max(link, receive)
        assert derived_ttft(c, rate) == max(link, receive) + answer
    assert transfer_seconds(MIN_BURST, 1.0) == 0.0  # the bucket's burst goes at once
    assert transfer_seconds(MIN_BURST + 1, 1.0) == 1.0


def test_which_cells_are_measured():
    # a cap on link time; a budget end on the run's clock; repeats multiply the predicted TTFT
    assert should_measure(5.0, 6.0, 1, now=0.0, end=None, max_transfer_s=None)
    assert not should_measure(41.0, 42.0, 1, now=0.0, end=None, max_transfer_s=40.0)
    assert should_measure(40.0, 42.0, 1, now=0.0, end=None, max_transfer_s=40.0)
    assert should_measure(1.0, 10.0, 1, now=90.0, end=100.0, max_transfer_s=None)
    assert not should_measure(1.0, 10.0, 2, now=90.0, end=100.0, max_transfer_s=None)
    assert not should_measure(1.0, 10.001, 1, now=90.0, end=100.0, max_transfer_s=40.0)


def test_bad_inputs_are_input_errors():
    with pytest.raises(InputError, match="positive"):
        transfer_seconds(100, 0.0)
    with pytest.raises(InputError, match="positive"):
        derived_ttft(Components(100, 0.1, 0.1), -1.0)
    with pytest.raises(InputError, match=">= 0"):
        Components(-1, 0.1, 0.1)
    with pytest.raises(InputError, match=">= 0"):
        Components(1, float("nan"), 0.1)
