"""How a row container describes itself to the wire format: the vocabulary each container
module uses to declare its encoding next to its class.

An encoding splits a container into ``Parts``: JSON-able ``meta`` (bit widths, group sizes,
run lengths), named ``arrays`` (tensors, or :class:`Symbols` for packed integer codes that
the entropy coders may code symbol by symbol), and named ``children`` (nested containers,
e.g. KIVI's quantized and dense halves). ``build`` does the inverse and must validate
everything it is given, because on the read path the parts come from a stranger's file:
the ``need*`` helpers turn a failed check into :class:`~kvstack.errors.CacheFormatError`.

Why here and not in :mod:`kvstack.wire`: the containers sit beneath the wire format, so
they cannot import it; the wire's registry (:mod:`kvstack.wire.encodings`) instead reads
the declarations listed in :data:`kvstack.rows.ENCODINGS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from kvstack.errors import CacheFormatError
from kvstack.rows.base import Encoded

# The only element types a stream may carry (name in the header -> torch dtype).
DTYPES: dict[str, torch.dtype] = {
    "uint8": torch.uint8,
    "int8": torch.int8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


def dtype_name(dtype: torch.dtype) -> str:
    """Header name of a torch dtype (KeyError for one the format cannot carry)."""
    return DTYPE_NAMES[dtype]


@dataclass(frozen=True)
class Symbols:
    """Packed ``bits``-bit codes (``uint8 [n, packed_width(dim, bits)]``, the layout of
    :mod:`kvstack.rows.pack`) that a codec may unpack and code as ``dim`` symbols per row."""

    packed: torch.Tensor
    bits: int
    dim: int


@dataclass
class Parts:
    """What an Encoded container is made of, in wire terms."""

    meta: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, torch.Tensor | Symbols | None] = field(default_factory=dict)
    children: dict[str, Encoded] = field(default_factory=dict)


Build = Callable[[dict, dict[str, torch.Tensor | None], dict[str, Encoded]], Encoded]


@dataclass(frozen=True)
class WireEncoding:
    """How one Encoded class is written (``parts``) and read back (``build``).

    ``kind`` is the stable name written in files: never reuse one for a different layout
    (bump it, e.g. ``lowrank2``), or files saved by an older kvstack decode wrongly.
    """

    kind: str
    cls: type
    parts: Callable[[Any], Parts]
    build: Build


# --- validation helpers for build functions ----------------------------------------------------
def need(cond: bool, what: str) -> None:
    """Raise CacheFormatError(``what``) unless ``cond``: the one-line check every build uses."""
    if not cond:
        raise CacheFormatError(f"corrupt cache: {what}")


def need_int(value: Any, what: str, lo: int = 0, hi: int = 1 << 62) -> int:
    """``value`` if it is an int (not a bool) in ``lo..hi``, else CacheFormatError."""
    need(isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi, f"{what}={value!r}")
    return value


def need_tensor(t: torch.Tensor | None, what: str, dtype: torch.dtype | None, shape: tuple[int, ...]) -> torch.Tensor:
    """``t`` if it is present with ``dtype`` (None: any) and exactly ``shape``, else CacheFormatError."""
    need(t is not None, f"{what} is missing")
    need(dtype is None or t.dtype == dtype, f"{what} has dtype {t.dtype}, expected {dtype}")
    need(tuple(t.shape) == shape, f"{what} has shape {tuple(t.shape)}, expected {shape}")
    return t


def need_float_dtype(name: Any, what: str = "output dtype") -> torch.dtype:
    """The floating-point dtype a file names in a container's meta, else CacheFormatError."""
    need(isinstance(name, str) and name in DTYPES and DTYPES[name].is_floating_point, f"{what} {name!r}")
    return DTYPES[name]
