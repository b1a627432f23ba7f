"""Lossless delta transforms of integer codes along tokens (rows), modulo the alphabet size.

CacheGen codes each token as a difference from an *anchor* token in groups of 10; the seed
research found delta schemes hurt at INT4. Here both are offered as reversible transforms of
the codes ahead of the entropy coder, so whether they help is measured per array (the
writer's ``delta="auto"`` keeps whichever gives the fewest estimated bits):

* ``seq``: every row minus the row before it (first row of a chunk kept as is);
* ``anchor``: rows in groups of ``ANCHOR_GROUP`` from the chunk start, each minus the
  group's first row (which is kept as is).

Differences wrap modulo ``alphabet`` so the symbols keep the codes' alphabet and the inverse
is exact. Rows cross head boundaries without special cases: that costs one poorer row per
head, and the decoder needs no knowledge of heads.
"""

from __future__ import annotations

import numpy as np

DELTAS = ("none", "seq", "anchor")
ANCHOR_GROUP = 10


def _anchor_rows(rows: int) -> np.ndarray:
    """Index of each row's anchor: the first row of its group of ``ANCHOR_GROUP``."""
    return (np.arange(rows) // ANCHOR_GROUP) * ANCHOR_GROUP


def forward(codes: np.ndarray, mode: str, alphabet: int) -> np.ndarray:
    """``codes`` ``[rows, dim]`` uint8 -> transformed ``[rows, dim]`` uint8.

    ``alphabet`` is a power of two, so uint8 arithmetic (which wraps modulo 256) followed by
    a mask is exactly arithmetic modulo the alphabet.
    """
    if mode == "none" or codes.shape[0] < 2:
        return codes
    mask = np.uint8(alphabet - 1)
    if mode == "seq":
        out = np.empty_like(codes)
        out[0] = codes[0]
        np.subtract(codes[1:], codes[:-1], out=out[1:])
    elif mode == "anchor":
        out = codes - codes[_anchor_rows(codes.shape[0])]
        out[::ANCHOR_GROUP] = codes[::ANCHOR_GROUP]
    else:
        raise ValueError(mode)
    out &= mask
    return out


def inverse(symbols: np.ndarray, mode: str, alphabet: int) -> np.ndarray:
    """Undo :func:`forward` exactly."""
    if mode == "none" or symbols.shape[0] < 2:
        return symbols
    mask = np.uint8(alphabet - 1)
    if mode == "seq":
        out = np.cumsum(symbols, axis=0, dtype=np.uint8)
    elif mode == "anchor":
        anchors = symbols[::ANCHOR_GROUP]
        out = symbols + np.repeat(anchors, ANCHOR_GROUP, axis=0)[: symbols.shape[0]]
        out[::ANCHOR_GROUP] = anchors
    else:
        raise ValueError(mode)
    out &= mask
    return out
