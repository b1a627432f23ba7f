"""Group sizes along a token, shared by the quantization stages (their recipe parameters:
:mod:`kvstack.grammar.params`)."""

from __future__ import annotations

from kvstack.errors import RecipeError


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
