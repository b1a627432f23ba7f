"""Stage parameters: how a recipe value is read, and the checks several stages share.

A :class:`Param` turns the text after ``name:`` into a typed value; the ``parse_*`` functions are
its kinds beyond ``int``/``float``/``str``. The ``check_*`` functions hold the range checks more
than one stage needs. Everything here is plain Python so the planner (no torch) reads recipes
exactly as :mod:`kvstack.stack` does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvstack.errors import BudgetError, RecipeError

PACKED_BITS = (2, 3, 4, 8)  # code widths the bit packing stores (kvstack.stages.quant_pack.SUPPORTED_BITS)
AXES = ("token", "channel")  # where a quantization group runs
TARGETS = ("kv", "k", "v")  # which rows a low-rank stage compresses
AUTO = "auto"
SAME = "same"


@dataclass(frozen=True)
class Param:
    """One stage parameter: how to parse it, its default, and a one-line help."""

    name: str
    kind: Callable[[str], Any]
    default: Any
    help: str

    def parse(self, stage: str, raw: str) -> Any:
        try:
            return self.kind(raw)
        except (TypeError, ValueError) as exc:
            kind = getattr(self.kind, "__name__", "value")
            raise RecipeError(
                f"stage '{stage}': parameter '{self.name}' got {raw!r}, which is not a valid {kind} "
                f"({self.help})"
            ) from exc


# --- kinds -------------------------------------------------------------------------------
def as_bool(raw: str) -> bool:
    low = raw.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


as_bool.__name__ = "boolean (true/false)"


def parse_axis(raw: str) -> str:
    """``token`` or ``channel`` (ValueError otherwise, which the recipe parser reports)."""
    value = raw.strip().lower()
    if value not in AXES:
        raise ValueError(raw)
    return value


parse_axis.__name__ = "axis (token or channel)"


def parse_rot(raw: str) -> bool | str:
    """``true``/``false`` as :func:`as_bool`, or ``auto``: rotate rows whose width is a power of two."""
    return AUTO if raw.strip().lower() == AUTO else as_bool(raw)


parse_rot.__name__ = "boolean (true/false) or auto"


def parse_vaxis(raw: str) -> str:
    """``same`` (the values follow ``axis``) or an axis of their own."""
    return SAME if raw.strip().lower() == SAME else parse_axis(raw)


parse_vaxis.__name__ = "same, token or channel"


def parse_ids(raw: str) -> tuple[int, ...]:
    """``"13/11/30"`` -> ``(13, 11, 30)`` (slashes: commas separate a stage's parameters)."""
    return tuple(int(x) for x in raw.split("/") if x.strip()) if raw.strip() else ()


parse_ids.__name__ = "list of token ids separated by '/'"


def parse_stride(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError(raw)
    return value


parse_stride.__name__ = "whole number >= 1"


# --- shorthands: a bare token standing for ``key=value`` -----------------------------------
_GROUP = re.compile(r"^g(\d+)$")


def group_shorthand(token: str) -> tuple[str, Any] | None:
    """``g64`` -> ``("group", 64)``."""
    m = _GROUP.match(token)
    return ("group", int(m.group(1))) if m else None


def rank_or_energy_shorthand(token: str) -> tuple[str, Any] | None:
    """``svd:16`` is a rank (the positional parameter); ``svd:0.95`` an energy."""
    try:
        value = float(token)
    except ValueError:
        return None
    if "." in token and 0.0 < value <= 1.0:
        return ("energy", value)
    return None


# --- checks shared by several stages --------------------------------------------------------
def check_choice(stage: str, name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise RecipeError(
            f"{stage}: {name}={value!r} is not one of {', '.join(choices)} (e.g. {name}={choices[0]})"
        )


def check_share_or_count(stage: str, name: str, value: float, hint: str) -> None:
    """A share in [0, 1) or a whole count >= 1 (H2O's ``recent``, FastGen's ``local``/``freq``)."""
    if value < 0 or (value >= 1 and value != int(value)) or math.isnan(value):
        raise RecipeError(f"{stage}: {name}={value} must be a share in [0, 1) or a whole count >= 1 ({hint})")


def check_outliers(stage: str, outliers: float) -> None:
    if not isinstance(outliers, float | int) or not 0.0 <= outliers < 1.0:
        raise RecipeError(f"{stage}: outliers={outliers} must be a share in [0, 1), e.g. outliers=0.01 (1%)")


def check_quant_sink(stage: str, sink: int) -> None:
    if not isinstance(sink, int) or sink < 0:
        raise RecipeError(f"{stage}: sink={sink} must be >= 0 tokens kept in fp16 (0 quantizes every token)")


def check_exact_sink(stage: str, sink: int) -> None:
    if not isinstance(sink, int) or sink < 0:
        raise RecipeError(f"{stage}: sink={sink} must be >= 0 tokens kept exact (0 projects every token)")


def check_bits(stage: str, bits: int, qgroup: int) -> None:
    """Low-rank coefficient bits (0: not quantized) and tokens per coefficient scale."""
    if bits and bits not in PACKED_BITS:
        raise RecipeError(
            f"{stage}: bits={bits} is not a packed width; use one of {', '.join(map(str, PACKED_BITS))} "
            "(or 0 to keep the coefficients in the model's dtype)"
        )
    if not isinstance(qgroup, int) or qgroup < 1:
        raise RecipeError(f"{stage}: qgroup={qgroup} must be >= 1 tokens per coefficient scale (e.g. 64)")


def check_rank_or_energy(stage: str, rank: int, energy: float) -> None:
    """Exactly one of ``rank`` (>= 1) and ``energy`` (in (0, 1]) must be given."""
    if rank and energy:
        raise RecipeError(f"{stage}: give rank={rank} or energy={energy}, not both")
    if not rank and not energy:
        raise RecipeError(
            f"{stage}: say how much to keep: rank=R (directions kept, e.g. {stage}:rank=16) or "
            f"energy=E (share of the energy kept, in (0, 1], e.g. {stage}:energy=0.95)"
        )
    if rank and (not isinstance(rank, int) or rank < 1):
        raise BudgetError(f"{stage}: rank={rank} must be a whole number >= 1 (directions kept per head)")
    if energy and not (0.0 < energy <= 1.0):
        raise BudgetError(
            f"{stage}: energy={energy} must be in (0, 1]: the share of the keys'/values' energy the "
            "basis keeps (0.95 keeps 95%; 1 keeps everything)"
        )


def check_rank_fits(stage: str, rank: int, dim: int, what: str) -> None:
    """A basis of ``dim``-dimensional rows has at most ``dim`` directions."""
    if rank > dim:
        raise BudgetError(
            f"{stage}: rank={rank} is larger than {what}={dim}; a basis of {dim}-dimensional rows has at "
            f"most {dim} directions: pick rank <= {dim} (or energy=E to choose it from the data)"
        )


def token_axis_group(stage: str, group: int, dim: int) -> int:
    """Channels per group along a token: ``group`` capped at ``dim``; it must divide ``dim``."""
    g = min(group, dim)
    if dim % g:
        divisors = [x for x in range(1, dim + 1) if dim % x == 0]
        raise RecipeError(
            f"{stage}: group={group} does not divide head_dim={dim} (groups along a token must tile "
            f"it; no padding): pick one of {divisors}"
        )
    return g
