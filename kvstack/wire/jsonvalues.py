"""Layer meta and cache stats as JSON that reads back to the same Python values.

JSON has no tuples, and ``cache.py`` unpacks meta such as ``decode_budget`` as a tuple, so
tuples are written as ``{"__tuple__": [...]}``; everything else must be plain JSON (numbers,
strings, booleans, None, lists, string-keyed dicts). Tensors in layer meta travel as arrays,
not here.
"""

from __future__ import annotations

import math
from typing import Any

from kvstack.errors import CacheFormatError, InputError

_TUPLE = "__tuple__"
MAX_DEPTH = 32


def dump(value: Any, where: str, depth: int = 0) -> Any:
    """A JSON-able copy of ``value`` (InputError naming ``where`` if it cannot be written)."""
    if depth > MAX_DEPTH:
        raise InputError(f"{where} nests deeper than {MAX_DEPTH} levels; flatten it")
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InputError(f"{where} holds {value}; the wire format stores finite numbers only")
        return value
    if isinstance(value, tuple):
        return {_TUPLE: [dump(v, where, depth + 1) for v in value]}
    if isinstance(value, list):
        return [dump(v, where, depth + 1) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value) and _TUPLE not in value:
        return {k: dump(v, f"{where}.{k}", depth + 1) for k, v in value.items()}
    raise InputError(
        f"{where} holds a {type(value).__name__}, which the wire format cannot store; keep meta to "
        "numbers, strings, lists, tuples, string-keyed dicts and (top level) tensors"
    )


def load(value: Any, depth: int = 0, *, max_items: int | None = None, where: str = "meta") -> Any:
    """Inverse of :func:`dump` (CacheFormatError for anything :func:`dump` never writes, for
    nesting deeper than ``MAX_DEPTH`` and, with ``max_items``, for more entries than that)."""
    if max_items is not None:
        _check_items(value, max_items, where)
    if depth > MAX_DEPTH:
        raise CacheFormatError(f"corrupt cache: {where} nests too deep")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [load(v, depth + 1, where=where) for v in value]
    if isinstance(value, dict):
        if set(value) == {_TUPLE} and isinstance(value[_TUPLE], list):
            return tuple(load(v, depth + 1, where=where) for v in value[_TUPLE])
        return {k: load(v, depth + 1, where=where) for k, v in value.items()}
    raise CacheFormatError(f"corrupt cache: unexpected {where} value {type(value).__name__}")


def _check_items(value: Any, max_items: int, where: str) -> None:
    """Count values, list items and keys without recursion; CacheFormatError past ``max_items``."""
    stack, seen = [value], 0
    while stack:
        v = stack.pop()
        seen += 1
        if seen > max_items:
            raise CacheFormatError(f"corrupt cache: {where} holds more than {max_items} JSON entries")
        if isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, dict):
            seen += len(v)
            stack.extend(v.values())


def plain_stats(stats: dict) -> dict:
    """The JSON-able entries of ``cache.stats`` (timings, counts); the rest is dropped, not fatal."""
    out = {}
    for key, value in stats.items():
        try:
            out[str(key)] = dump(value, f"stats.{key}")
        except InputError:
            continue
    return out
