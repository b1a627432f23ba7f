"""TTFT of cells that are not shaped for real, from components that were measured.

A slow link makes some cells too long to run (a 4 GiB fp16 cache takes 344 s at 0.1 Gbit/s), so
for each path the bench measures, on this machine, what does not depend on the link: the unshaped
pull over loopback (request, transfer, stream decoding, upload to the device: ``receive_s``) and
the first token from what arrived (``answer_s``). A cell at ``rate`` bytes/s is then

    receive = max((bytes - burst) / rate, receive_s)        TTFT = receive + answer_s

The receiver decodes each chunk as it arrives, so decoding hides behind a slow transfer and the
transfer behind slow decoding: whichever is slower sets the pace. That assumes perfect overlap,
so it is a lower bound, off by at most the smaller of the two when they are close (their sum is
the upper bound). ``burst`` is what the token bucket releases at once
(:func:`kvstack.linkbench.link.burst_bytes`: 10 ms of data, at least 64 KiB); it matters only for
payloads of a few hundred KB. Measured cells report this value beside their measurement, which
shows how far off it is on the machine at hand; derived cells are labelled ``derived`` wherever
they appear.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvstack.errors import InputError
from kvstack.linkbench.link import burst_bytes


@dataclass(frozen=True)
class Components:
    """What one path of one context costs on this machine, measured without a shaped link."""

    nbytes: int  # bytes sent
    receive_s: float  # request -> cache decoded and on the device, unshaped loopback
    answer_s: float  # cache (or text) -> first token: question prefill (text: prefill of everything)

    def __post_init__(self) -> None:
        if self.nbytes < 0 or not self.receive_s >= 0 or not self.answer_s >= 0:
            raise InputError(f"components need bytes, receive and answer times >= 0, got {self}")


def _check(rate: float) -> None:
    if not rate > 0:
        raise InputError(f"link rate {rate!r} bytes/s must be positive")


def transfer_seconds(nbytes: int, rate: float) -> float:
    """Seconds the shaped link itself needs for ``nbytes`` at ``rate`` bytes/s (after its burst)."""
    _check(rate)
    return max(nbytes - burst_bytes(rate), 0) / rate


def derived_receive(c: Components, rate: float) -> float:
    """Request to decoded cache at ``rate``: the slower of the link and the unshaped receive path."""
    return max(transfer_seconds(c.nbytes, rate), c.receive_s)


def derived_ttft(c: Components, rate: float) -> float:
    """Time to first token at ``rate`` bytes/s (module doc)."""
    return derived_receive(c, rate) + c.answer_s


def should_measure(transfer_s: float, predicted_s: float, repeat: int, now: float, end: float | None,
                   max_transfer_s: float | None) -> bool:
    """Shape a cell for real only if its link time is within ``max_transfer_s`` and its ``repeat``
    pulls, at the predicted TTFT each, end before the time budget ``end`` (same clock as ``now``)."""
    if max_transfer_s is not None and transfer_s > max_transfer_s:
        return False
    return end is None or now + repeat * predicted_s <= end
