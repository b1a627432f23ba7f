"""How one cached element is stored: bits per element plus per-group scale/zero overhead.

int4 is half a byte, not one: sizes are counted in bits and rounded to bytes once per layer.
A quantizer also stores a scale (and usually a zero point) for every group of elements;
``group_size`` adds that fp16 overhead so "4-bit" is not mistaken for a 4x saving over bf16.
A layer is anything with ``key_vectors()``, ``value_vectors()`` and ``elements_per_token``
(the planner's :class:`kvstack.plan.spec.LayerSpec`), so this module needs neither torch nor
the planner.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from kvstack.errors import RecipeError

SCALE_BITS = 16  # one fp16 scale per group
ZERO_BITS = 16  # one fp16 zero point per group (asymmetric quantization)


@dataclass(frozen=True)
class Precision:
    """How one cached element is stored: bits per element plus per-group scale/zero overhead.

    ``bits`` is a Fraction so approximate methods (kvquant's 3.32 bits) stay exact in arithmetic.
    ``axis`` says where a group runs: ``token`` (channels of one token; a group never spans
    two head vectors, so a 128-dim head with group 64 holds two groups), ``channel`` (tokens of
    one channel; the last group of a channel may be short) or ``kivi`` (keys per channel,
    values per token); ``value_axis`` gives the values an axis of their own.
    """

    name: str
    bits: Fraction
    group_size: int | None = None
    group_overhead_bits: int = 0
    axis: str = "token"
    tile: bool = False  # kvstack stages: a token-axis group (capped at the vector) must divide it
    value_axis: str | None = None  # the values' own axis when it differs from the keys' (int4:vaxis=token)

    def _split(self, layer: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(vectors grouped along a token, channels grouped along tokens)."""
        keys, values = tuple(layer.key_vectors()), tuple(layer.value_vectors())
        if self.axis == "kivi":
            key_axis, value_axis = "channel", "token"
        else:
            key_axis, value_axis = self.axis, self.value_axis or self.axis
        per_token = (keys if key_axis == "token" else ()) + (values if value_axis == "token" else ())
        per_channel = (keys if key_axis == "channel" else ()) + (values if value_axis == "channel" else ())
        return per_token, per_channel

    def _token_groups(self, vectors: tuple[int, ...]) -> int:
        g = self.group_size or 1
        if self.tile:
            for n in set(vectors):
                if n % min(g, n):
                    divisors = [d for d in range(1, n + 1) if n % d == 0]
                    raise RecipeError(
                        f"{self.name}: group={g} does not divide head_dim={n} (kvstack's groups "
                        f"along a token must tile it); use a divisor such as g{divisors[-2]} "
                        f"(divisors: {divisors[-6:]})"
                    )
        return sum(-(-n // g) for n in vectors)

    def bits_per_token(self, layer: Any, base: Any = None) -> Fraction:
        """Bits one more token costs in ``layer`` (channel-axis scales amortized over tokens)."""
        total = Fraction(layer.elements_per_token) * self.bits
        if self.group_size:
            per_token, per_channel = self._split(layer)
            total += self._token_groups(per_token) * self.group_overhead_bits
            total += Fraction(sum(per_channel) * self.group_overhead_bits, self.group_size)
        return total

    def layer_bits(self, layer: Any, tokens: int, base: Any = None, kept: Any = None) -> Fraction:
        """Bits ``tokens`` tokens take in ``layer``, with channel-axis groups counted whole."""
        if not tokens:
            return Fraction(0)
        total = tokens * Fraction(layer.elements_per_token) * self.bits
        if self.group_size:
            per_token, per_channel = self._split(layer)
            groups = self._token_groups(per_token) * tokens
            groups += -(-tokens // self.group_size) * sum(per_channel)
            total += groups * self.group_overhead_bits
        return total

    @property
    def label(self) -> str:
        if not self.group_size:
            return self.name
        what = "scale+zero" if self.group_overhead_bits == SCALE_BITS + ZERO_BITS else "scale"
        axis = {"token": "", "channel": ", per channel", "kivi": ", K per channel"}[self.axis]
        if self.value_axis and self.value_axis != self.axis:
            axis += f", V per {self.value_axis}"
        return f"{self.name} g{self.group_size}{axis} (+fp16 {what})"
