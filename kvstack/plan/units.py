"""Read and print the quantities the planner talks about: memory sizes, contexts, byte counts.

Memory units are explicit (GB = 10**9, GiB = 2**30) because a planner that silently mixes them
is off by 7% at exactly the margin where "it fits" turns into "out of memory". Contexts use
K = 1024 the way model cards do (128K = 131,072 tokens).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from kvstack.errors import InputError

_MEMORY_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_CONTEXT_UNITS = {"": 1, "k": 2**10, "m": 2**20}
_NUMBER = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*$")


def _split(text: str) -> tuple[Decimal, str] | None:
    m = _NUMBER.match(text)
    if not m:
        return None
    try:
        return Decimal(m.group(1)), m.group(2).lower()
    except InvalidOperation:  # pragma: no cover - the regex only lets numbers through
        return None


def parse_size(value: str | int) -> int:
    """Bytes in a memory size: ``8GiB``, ``80GB``, ``512MiB``, ``1.5TiB`` or plain bytes.

    Single-letter units (``8G``) are refused: they are ambiguous between GB and GiB.
    """
    if isinstance(value, bool):
        raise InputError(f"memory size {value!r} is not a number of bytes")
    if isinstance(value, int):
        if value <= 0:
            raise InputError(f"memory size must be positive, got {value}")
        return value
    parts = _split(str(value))
    if parts is None:
        raise InputError(
            f"cannot read memory size {value!r}: write a number and a unit, "
            "e.g. 8GiB, 80GB, 512MiB, or plain bytes"
        )
    number, unit = parts[0], parts[1] or "b"
    if unit in ("k", "m", "g", "t"):
        raise InputError(
            f"memory size {value!r} is ambiguous: write {number}{unit.upper()}iB "
            f"(powers of 1024) or {number}{unit.upper()}B (powers of 1000)"
        )
    if unit not in _MEMORY_UNITS:
        raise InputError(
            f"unknown memory unit {unit!r} in {value!r}; use one of "
            "B, KB, MB, GB, TB, KiB, MiB, GiB, TiB"
        )
    size = int(number * _MEMORY_UNITS[unit])
    if size <= 0:
        raise InputError(f"memory size must be positive, got {value!r}")
    return size


def parse_context(value: str | int) -> int:
    """Tokens in a context: ``8K`` (8,192), ``128K``, ``1M`` (1,048,576) or a plain integer."""
    if isinstance(value, bool):
        raise InputError(f"context {value!r} is not a number of tokens")
    if isinstance(value, int):
        tokens = value
    else:
        parts = _split(str(value))
        if parts is None or parts[1] not in _CONTEXT_UNITS:
            raise InputError(
                f"cannot read context {value!r}: write tokens as an integer or with K/M "
                "(K = 1024), e.g. 8K, 128K, 1M, 4096"
            )
        number, unit = parts
        exact = number * _CONTEXT_UNITS[unit]
        if exact != exact.to_integral_value():
            raise InputError(f"context {value!r} is not a whole number of tokens ({exact})")
        tokens = int(exact)
    if tokens <= 0:
        raise InputError(f"context must be at least 1 token, got {value!r}")
    return tokens


def parse_positive_int(value: str | int, what: str) -> int:
    """An integer >= 1 for options like --batch or --gqa; the error names the option."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a whole number, got {value!r}") from None
    if number < 1:
        raise InputError(f"{what} must be at least 1, got {number}")
    return number


def format_bytes(n: float) -> str:
    """``16.00 GiB`` style: binary units, two decimals; whole bytes below 1 KiB."""
    if n < 1024:
        return f"{n:,.0f} B"
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:,.2f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def format_context(tokens: int) -> str:
    """``128K`` / ``1M`` when the count is a whole multiple of 1024, else ``130,000``."""
    if tokens >= 2**20 and tokens % 2**20 == 0:
        return f"{tokens // 2**20}M"
    if tokens >= 1024 and tokens % 1024 == 0:
        return f"{tokens // 1024}K"
    return f"{tokens:,}"


def format_number(x: float) -> str:
    """Thousands separators; integers without decimals, fractions with up to three."""
    if float(x).is_integer():
        return f"{int(x):,}"
    return f"{x:,.3f}".rstrip("0").rstrip(".")
