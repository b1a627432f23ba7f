"""Recipe parameters shared by the low-rank and cross-layer stages (rank, energy, coefficient bits)."""

from __future__ import annotations

from typing import Any

from kvstack.errors import RecipeError
from kvstack.rows.pack import SUPPORTED_BITS
from kvstack.stack import Param

RANK = Param("rank", int, 0, "directions kept (0: choose by energy=)")
ENERGY = Param("energy", float, 0.0, "share of the energy kept, in (0, 1]; picks the smallest rank that keeps it")
SINK = Param("sink", int, 4, "first tokens kept exact (attention sinks) and left out of the basis fit")
BITS = Param(
    "bits", int, 0, f"quantize the coefficients to {'/'.join(map(str, SUPPORTED_BITS))} bits per channel (0: keep)"
)
QGROUP = Param("qgroup", int, 64, "tokens sharing one coefficient scale when bits is set")
BASIS = Param(
    "basis", str, "", "calibrated basis file from `kvstack calibrate` (not counted in the cache); empty: fit here"
)


def check_bits(stage: str, bits: int, qgroup: int) -> None:
    if bits and bits not in SUPPORTED_BITS:
        raise RecipeError(
            f"{stage}: bits={bits} is not a packed width; use one of {', '.join(map(str, SUPPORTED_BITS))} "
            "(or 0 to keep the coefficients in the model's dtype)"
        )
    if not isinstance(qgroup, int) or qgroup < 1:
        raise RecipeError(f"{stage}: qgroup={qgroup} must be >= 1 tokens per coefficient scale (e.g. 64)")


def check_sink(stage: str, sink: int) -> None:
    if not isinstance(sink, int) or sink < 0:
        raise RecipeError(f"{stage}: sink={sink} must be >= 0 tokens kept exact (0 projects every token)")


def rank_or_energy_shorthand(token: str) -> tuple[str, Any] | None:
    """``svd:16`` is a rank (the positional parameter); ``svd:0.95`` an energy."""
    try:
        value = float(token)
    except ValueError:
        return None
    if "." in token and 0.0 < value <= 1.0:
        return ("energy", value)
    return None
