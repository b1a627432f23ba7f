"""Which rows share a scale when quantizing along tokens, and fp16 rounding in a chosen direction.

Rows are ragged by head (head-major), so a group of tokens must never span two heads:
every head (a *segment* of consecutive rows) is cut on its own into runs of ``group``
rows, and its last run may be shorter.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def token_groups(segments: Sequence[int], group: int, device=None) -> tuple[torch.Tensor, int]:
    """Group id of every row (``[sum(segments)]`` int64) and the number of groups.

    Segment ``h`` of ``segments[h]`` rows gets ``ceil(segments[h] / group)`` groups of
    consecutive rows; ids count up through the segments in order.
    """
    lengths = torch.tensor(list(segments), dtype=torch.long, device=device)
    per_seg = (lengths + group - 1) // group
    group_start = torch.cumsum(per_seg, 0) - per_seg
    row_start = torch.cumsum(lengths, 0) - lengths
    seg = torch.repeat_interleave(torch.arange(lengths.numel(), device=device), lengths)
    local = torch.arange(seg.numel(), device=device) - row_start[seg]
    return group_start[seg] + local // group, int(per_seg.sum())


def segment_ids(segments: Sequence[int], device=None) -> torch.Tensor:
    """Segment index of every row, ``[sum(segments)]`` int64."""
    lengths = torch.tensor(list(segments), dtype=torch.long, device=device)
    return torch.repeat_interleave(torch.arange(lengths.numel(), device=device), lengths)


def run_lengths(ids: torch.Tensor) -> tuple[int, ...]:
    """Lengths of the runs of equal consecutive values (the segments rows fall into after a select)."""
    if ids.numel() == 0:
        return ()
    return tuple(int(c) for c in torch.unique_consecutive(ids, return_counts=True)[1])


def fp16_up(x: torch.Tensor) -> torch.Tensor:
    """The smallest float16 ``>= x``: a scale that never shrinks the range it must cover."""
    h = x.to(torch.float16)
    return torch.where(h.float() < x, torch.nextafter(h, torch.full_like(h, float("inf"))), h)


def fp16_down(x: torch.Tensor) -> torch.Tensor:
    """The largest float16 ``<= x``: an offset that never sits above the group minimum."""
    h = x.to(torch.float16)
    return torch.where(h.float() > x, torch.nextafter(h, torch.full_like(h, float("-inf"))), h)
