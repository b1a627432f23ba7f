"""A registry of how each :class:`~kvstack.kv.Encoded` class becomes arrays on the wire and back.

Each container declares its own encoding next to its class (see :mod:`kvstack.rows.encoding`
for ``Parts``, ``Symbols`` and the ``need*`` checks a ``build`` uses); the built-in ones,
:data:`kvstack.rows.ENCODINGS`, are registered when this module is imported. A new Encoded
class (low rank, cross-layer, ...) plugs in with :func:`register_encoding`; nothing else in
the wire format changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kvstack.errors import CacheFormatError, InputError
from kvstack.rows import ENCODINGS
from kvstack.rows.base import Encoded
from kvstack.rows.encoding import Build, Parts, Symbols, WireEncoding, need, need_int, need_tensor

# ``Encoding`` is this module's older name for a container's declared encoding.
Encoding = WireEncoding

__all__ = [
    "Encoding",
    "Parts",
    "Symbols",
    "encoding_for",
    "encoding_of_kind",
    "need",
    "need_int",
    "need_tensor",
    "register_encoding",
]

_BY_CLASS: dict[type, WireEncoding] = {}
_BY_KIND: dict[str, WireEncoding] = {}


def register_encoding(cls: type, kind: str, parts: Callable[[Any], Parts], build: Build) -> None:
    """Teach the wire format a new Encoded class. ``kind`` is the stable name written in files:
    never reuse one for a different layout (bump it, e.g. ``lowrank2``)."""
    if kind in _BY_KIND and _BY_KIND[kind].cls is not cls:
        raise InputError(f"wire encoding kind {kind!r} is already used by {_BY_KIND[kind].cls.__name__}")
    enc = WireEncoding(kind, cls, parts, build)
    _BY_CLASS[cls] = enc
    _BY_KIND[kind] = enc


def encoding_for(obj: Encoded) -> WireEncoding:
    """The registered encoding of ``obj``'s class (InputError saying how to add one)."""
    enc = _BY_CLASS.get(type(obj))
    if enc is None:
        raise InputError(
            f"the wire format does not know {describe(obj)}, so this cache cannot be saved or sent yet; "
            "register it with kvstack.wire.register_encoding(cls, kind, parts, build)"
        )
    return enc


def describe(obj: Encoded) -> str:
    """The class name of ``obj`` and of the encoding it wraps (``KeptRows holding CQRows``), if any.

    Why: a wrapper such as the rows a stage keeps exact around another encoding says nothing about
    which method built the cache; the wrapped encoding does.
    """
    inner = getattr(obj, "inner", None)
    name = type(obj).__name__
    return name if inner is None else f"{name} holding {describe(inner)}"


def encoding_of_kind(kind: str) -> WireEncoding:
    """The encoding a file names (CacheFormatError for an unknown kind)."""
    enc = _BY_KIND.get(kind)
    if enc is None:
        raise CacheFormatError(
            f"this cache uses the row encoding {kind!r}, which this kvstack does not know; "
            f"known: {', '.join(sorted(_BY_KIND))}. Upgrade kvstack or re-save the cache with this version."
        )
    return enc


# Filled at import (under Python's import lock), so a server's worker threads never see a
# half-filled registry.
for _builtin in ENCODINGS:
    register_encoding(_builtin.cls, _builtin.kind, _builtin.parts, _builtin.build)
