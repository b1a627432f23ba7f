"""Entropy coding of integer codes with ``constriction`` (ANS or range coding).

A *model* is one categorical distribution per group of ``width`` consecutive channels,
fitted on the codes of one array of one cache (so per layer, keys and values apart) and
stored in the header as ``uint16`` frequencies: the reader rebuilds the very same float64
probabilities from them, which makes the coder's fixed-point model identical on both sides.
Channels get their own statistics because KV channels differ (outlier channels, RoPE
frequency bands); the writer picks the width that minimises the estimated bits including
the table itself.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from kvstack.errors import CacheFormatError
from kvstack.wire.deps import require

ENTROPY_CODECS = ("ans", "range")
FREQ_MAX = 0xFFFF
_TABLE_BITS = 16  # bits one stored frequency costs


@dataclass(frozen=True)
class Model:
    """Quantized frequencies ``uint16 [dim // width, alphabet]``: one distribution per channel group."""

    width: int
    freq: np.ndarray

    @property
    def groups(self) -> int:
        return int(self.freq.shape[0])

    @property
    def alphabet(self) -> int:
        return int(self.freq.shape[1])

    @cached_property
    def coders(self) -> list:
        constriction = require("constriction")
        out = []
        for row in self.freq:
            p = row.astype(np.float64)
            if p.sum() == 0:  # a group with no symbols at all (empty array): any valid model
                p = np.ones_like(p)
            out.append(constriction.stream.model.Categorical(p, perfect=False))
        return out

    def to_json(self) -> dict:
        return {"width": self.width, "freq": base64.b64encode(self.freq.astype("<u2").tobytes()).decode("ascii")}

    @classmethod
    def from_json(cls, obj, dim: int, alphabet: int) -> Model:
        """Parse and validate a stored model for ``dim`` channels of ``alphabet`` symbols."""
        if not isinstance(obj, dict) or set(obj) != {"width", "freq"}:
            raise CacheFormatError("corrupt cache: an entropy model must have 'width' and 'freq'")
        width, text = obj["width"], obj["freq"]
        if not isinstance(width, int) or isinstance(width, bool) or width < 1 or dim % width:
            raise CacheFormatError(f"corrupt cache: model width {width!r} does not divide {dim} channels")
        if not isinstance(text, str) or len(text) > 4 * ((dim // width) * alphabet * 2 + 2) // 3 + 4:
            raise CacheFormatError("corrupt cache: entropy model table of the wrong size")
        try:
            raw = base64.b64decode(text.encode("ascii"), validate=True)
        except (ValueError, UnicodeEncodeError) as exc:
            raise CacheFormatError("corrupt cache: entropy model table is not base64") from exc
        if len(raw) != (dim // width) * alphabet * 2:
            raise CacheFormatError("corrupt cache: entropy model table of the wrong size")
        freq = np.frombuffer(raw, dtype="<u2").reshape(dim // width, alphabet).astype(np.uint16)
        return cls(width, freq)


def channel_histogram(symbols: np.ndarray, alphabet: int) -> np.ndarray:
    """Counts ``int64 [dim, alphabet]`` of each symbol in each channel of ``[rows, dim]`` symbols."""
    dim = symbols.shape[1]
    flat = (np.arange(dim, dtype=np.int32)[None, :] * alphabet + symbols).ravel()
    return np.bincount(flat, minlength=dim * alphabet).reshape(dim, alphabet)


def estimated_bits(hist: np.ndarray, width: int) -> float:
    """Bits to code ``hist``'s symbols with one model per ``width`` channels, table included."""
    counts = hist.reshape(hist.shape[0] // width, width, hist.shape[1]).sum(1).astype(np.float64)
    totals = counts.sum(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = np.where(counts > 0, np.log2(counts / np.maximum(totals, 1)), 0.0)
    return float(-(counts * logp).sum()) + counts.size * _TABLE_BITS


def width_choices(dim: int) -> list[int]:
    return [w for w in (1, 4, 16, dim) if dim % w == 0]


def fit(hist: np.ndarray) -> Model:
    """The model (width and quantized frequencies) with the fewest estimated bits for ``hist``."""
    dim, _ = hist.shape
    width = min(width_choices(dim), key=lambda w: estimated_bits(hist, w))
    counts = hist.reshape(dim // width, width, -1).sum(1).astype(np.float64)
    totals = np.maximum(counts.sum(1, keepdims=True), 1)
    freq = np.round(counts * FREQ_MAX / totals)
    freq = np.where((counts > 0) & (freq == 0), 1, freq)  # a symbol that occurs keeps a nonzero share
    return Model(width, np.minimum(freq, FREQ_MAX).astype(np.uint16))


def encode(symbols: np.ndarray, model: Model, coder: str) -> bytes:
    """Code ``[rows, dim]`` symbols group by group; returns the coder's 32-bit words as bytes."""
    constriction = require("constriction")
    groups = [np.ascontiguousarray(symbols[:, g * model.width : (g + 1) * model.width]).ravel().astype(np.int32)
              for g in range(model.groups)]
    if coder == "ans":
        enc = constriction.stream.stack.AnsCoder()
        for g in reversed(range(model.groups)):  # a stack: the last pushed is decoded first
            enc.encode_reverse(groups[g], model.coders[g])
    else:
        enc = constriction.stream.queue.RangeEncoder()
        for g in range(model.groups):
            enc.encode(groups[g], model.coders[g])
    return enc.get_compressed().astype("<u4").tobytes()


def decode(payload: bytes, rows: int, model: Model, coder: str) -> np.ndarray:
    """Inverse of :func:`encode`: ``uint8 [rows, dim]`` (CacheFormatError if the words do not decode)."""
    constriction = require("constriction")
    if len(payload) % 4:
        raise CacheFormatError("corrupt cache: an entropy-coded chunk is not a whole number of 32-bit words")
    words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
    out = np.empty((rows, model.groups * model.width), dtype=np.uint8)
    try:
        if coder == "ans":
            dec = constriction.stream.stack.AnsCoder(words)
        else:
            dec = constriction.stream.queue.RangeDecoder(words)
        for g in range(model.groups):
            part = dec.decode(model.coders[g], rows * model.width)
            out[:, g * model.width : (g + 1) * model.width] = part.reshape(rows, model.width)
    except CacheFormatError:
        raise
    except Exception as exc:  # noqa: BLE001 - the coder rejects malformed words in its own ways
        raise CacheFormatError(f"corrupt cache: entropy-coded chunk does not decode ({exc})") from exc
    if out.size and int(out.max()) >= model.alphabet:
        raise CacheFormatError("corrupt cache: decoded a symbol outside the alphabet")
    return out
