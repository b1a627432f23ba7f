"""Recipe parameters shared by the quantization stages (``g64``, ``axis=channel``, ``sym``)."""

from __future__ import annotations

import re
from typing import Any

from kvstack.errors import RecipeError
from kvstack.rows.quant import AXES

_GROUP = re.compile(r"^g(\d+)$")


def parse_axis(raw: str) -> str:
    """``token`` or ``channel`` (ValueError otherwise, which the recipe parser reports)."""
    value = raw.strip().lower()
    if value not in AXES:
        raise ValueError(raw)
    return value


parse_axis.__name__ = "axis (token or channel)"


def group_shorthand(token: str) -> tuple[str, Any] | None:
    """``g64`` -> ``("group", 64)``."""
    m = _GROUP.match(token)
    return ("group", int(m.group(1))) if m else None


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
