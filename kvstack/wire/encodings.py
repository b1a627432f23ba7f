"""A registry of how each :class:`~kvstack.kv.Encoded` class becomes arrays on the wire and back.

An encoding splits a container into ``Parts``: JSON-able ``meta`` (bit widths, group sizes,
run lengths), named ``arrays`` (tensors, or :class:`Symbols` for packed integer codes that
the entropy coders may code symbol by symbol), and named ``children`` (nested containers,
e.g. KIVI's quantized and dense halves). ``build`` does the inverse and must validate
everything it is given, because on the read path the parts come from a stranger's file.

A new Encoded class (low rank, cross-layer, ...) plugs in with :func:`register_encoding`;
nothing else in the wire format changes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from kvstack.errors import CacheFormatError, InputError
from kvstack.kv import DenseRows, Encoded


@dataclass(frozen=True)
class Symbols:
    """Packed ``bits``-bit codes (``uint8 [n, packed_width(dim, bits)]``, the layout of
    ``kvstack.stages.quant_pack``) that a codec may unpack and code as ``dim`` symbols per row."""

    packed: torch.Tensor
    bits: int
    dim: int


@dataclass
class Parts:
    """What an Encoded container is made of, in wire terms."""

    meta: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, torch.Tensor | Symbols | None] = field(default_factory=dict)
    children: dict[str, Encoded] = field(default_factory=dict)


@dataclass(frozen=True)
class Encoding:
    """How one Encoded class is written (``parts``) and read back (``build``)."""

    kind: str
    cls: type
    parts: Callable[[Any], Parts]
    build: Callable[[dict, dict[str, torch.Tensor | None], dict[str, Encoded]], Encoded]


_BY_CLASS: dict[type, Encoding] = {}
_BY_KIND: dict[str, Encoding] = {}


def register_encoding(
    cls: type,
    kind: str,
    parts: Callable[[Any], Parts],
    build: Callable[[dict, dict[str, torch.Tensor | None], dict[str, Encoded]], Encoded],
) -> None:
    """Teach the wire format a new Encoded class. ``kind`` is the stable name written in files:
    never reuse one for a different layout (bump it, e.g. ``lowrank2``)."""
    if kind in _BY_KIND and _BY_KIND[kind].cls is not cls:
        raise InputError(f"wire encoding kind {kind!r} is already used by {_BY_KIND[kind].cls.__name__}")
    enc = Encoding(kind, cls, parts, build)
    _BY_CLASS[cls] = enc
    _BY_KIND[kind] = enc


def encoding_for(obj: Encoded) -> Encoding:
    """The registered encoding of ``obj``'s class (InputError saying how to add one)."""
    _load_builtin()
    enc = _BY_CLASS.get(type(obj))
    if enc is None:
        raise InputError(
            f"the wire format does not know {type(obj).__name__}; register it with "
            "kvstack.wire.register_encoding(cls, kind, parts, build)"
        )
    return enc


def encoding_of_kind(kind: str) -> Encoding:
    """The encoding a file names (CacheFormatError for an unknown kind)."""
    _load_builtin()
    enc = _BY_KIND.get(kind)
    if enc is None:
        raise CacheFormatError(
            f"this cache uses the row encoding {kind!r}, which this kvstack does not know; "
            f"known: {', '.join(sorted(_BY_KIND))}. Upgrade kvstack or re-save the cache with this version."
        )
    return enc


# --- validation helpers for build functions ----------------------------------------------------
def need(cond: bool, what: str) -> None:
    """Raise CacheFormatError(``what``) unless ``cond``: the one-line check every build uses."""
    if not cond:
        raise CacheFormatError(f"corrupt cache: {what}")


def need_int(value: Any, what: str, lo: int = 0, hi: int = 1 << 62) -> int:
    need(isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi, f"{what}={value!r}")
    return value


def need_tensor(t: torch.Tensor | None, what: str, dtype: torch.dtype | None, shape: tuple[int, ...]) -> torch.Tensor:
    need(t is not None, f"{what} is missing")
    need(dtype is None or t.dtype == dtype, f"{what} has dtype {t.dtype}, expected {dtype}")
    need(tuple(t.shape) == shape, f"{what} has shape {tuple(t.shape)}, expected {shape}")
    return t


# --- DenseRows -------------------------------------------------------------------------------------
def _dense_parts(enc: DenseRows) -> Parts:
    return Parts(arrays={"data": enc.data})


def _dense_build(meta: dict, arrays: dict, children: dict) -> DenseRows:
    data = arrays.get("data")
    need(data is not None and data.dim() == 2, "dense rows must be a 2-D tensor")
    need(data.dtype.is_floating_point, f"dense rows must be floating point, not {data.dtype}")
    return DenseRows(data)


_loaded = False
_loading = threading.Lock()


def _load_builtin() -> None:
    """Register the built-in encodings once. Thread-safe: a server decodes uploads in worker
    threads, and a thread must never see the flag set before the registry is filled."""
    global _loaded
    if _loaded:
        return
    with _loading:
        if _loaded:
            return
        register_encoding(DenseRows, "dense", _dense_parts, _dense_build)
        from kvstack.wire import encodings_quant  # noqa: F401  (registers quant and split)
        _loaded = True
