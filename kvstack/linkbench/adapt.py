"""Bandwidth adaptation (CacheGen's idea): given a link rate and a time-to-first-token deadline,
choose per layer the quantization level of its wire chunks, or resending the text instead, so
that the predicted TTFT meets the deadline with the least estimated damage.

Everything the choice uses is measured once per context (:class:`Costs`): the wire bytes of
every layer at every level, a damage proxy per (layer, level) (KL to the full cache with that
layer alone quantized, as ``kvstack diagnose`` measures it), decode seconds per level, the
first token's compute, and the full-text prefill. The predicted TTFT is

    shared bytes / rate + sum over layers of (bytes / rate + decode share) + first token

(transfer and decode added, not overlapped: a conservative prediction), and the text plan's
is ``text bytes / rate + prefill of everything``. Damage is summed over layers (as in
``kvstack diagnose``); text has damage 0. The choice among levels is an exact multiple-choice
knapsack (:func:`kvstack.diagnose.knapsack.allocate`, times in whole microseconds).

Why no *token-range* text chunks (resend the last k tokens as text, KV for the rest): the
tail's prefill can only start once the prefix's KV has arrived, so its predicted time is a
convex combination of the all-KV and all-text times - never below both - while its damage
is no lower than the all-KV plan's. CacheGen gains from text chunks by overlapping their
recomputation on a GPU with the transfer of other chunks; a receiver that prefills layer by
layer as layers arrive could too, and that is not built here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kvstack.errors import BudgetError, InputError

TEXT = "text"
_US = 1e6  # the knapsack works in whole microseconds


@dataclass(frozen=True)
class Costs:
    """What one context costs to send, per layer and level (see the module doc)."""

    levels: tuple[str, ...]
    bytes: list[dict[str, int]]  # wire bytes of each layer at each level
    damage: list[dict[str, float]]  # damage proxy of each layer at each level
    decode_s: dict[str, float]  # seconds to decode the whole cache at each level
    shared_bytes: int  # header, token ids, framing: sent whatever the levels
    tokens: int
    first_token_s: float  # question prefill + first token, from a received cache
    text_s: float  # prefill of the whole text + first token
    text_bytes: int

    def __post_init__(self) -> None:
        if not self.levels or len(self.bytes) != len(self.damage) or not self.bytes:
            raise InputError("costs need at least one level and one bytes and damage table per layer")
        for table in (*self.bytes, *self.damage, self.decode_s):
            if set(table) != set(self.levels):
                raise InputError(f"every cost table must name exactly the levels {', '.join(self.levels)}")
        if self.tokens < 1:
            raise InputError("costs of an empty context")


@dataclass(frozen=True)
class Plan:
    """A choice: ``levels`` per layer (empty when the text is sent instead), and its predicted cost."""

    levels: tuple[str, ...]
    predicted_s: float
    damage: float
    bytes: int
    meets: bool

    @property
    def is_text(self) -> bool:
        return not self.levels

    def describe(self) -> str:
        if self.is_text:
            return TEXT
        counts = {lv: self.levels.count(lv) for lv in dict.fromkeys(self.levels)}
        return " ".join(f"{lv}x{n}" for lv, n in counts.items())


def layer_seconds(costs: Costs, rate: float, layer: int, level: str) -> float:
    """Predicted seconds one layer at one level adds: its transfer plus its share of decoding."""
    return costs.bytes[layer][level] / rate + costs.decode_s[level] / len(costs.bytes)


def fixed_seconds(costs: Costs, rate: float) -> float:
    """Seconds a KV plan costs whatever its levels: shared bytes and the first token."""
    return costs.shared_bytes / rate + costs.first_token_s


def predict(costs: Costs, rate: float, levels: tuple[str, ...]) -> Plan:
    """The predicted cost of a given choice (``levels=()``: the text instead)."""
    if not levels:
        return Plan((), costs.text_bytes / rate + costs.text_s, 0.0, costs.text_bytes, False)
    seconds = fixed_seconds(costs, rate) + sum(layer_seconds(costs, rate, i, lv) for i, lv in enumerate(levels))
    nbytes = costs.shared_bytes + sum(costs.bytes[i][lv] for i, lv in enumerate(levels))
    damage = sum(costs.damage[i][lv] for i, lv in enumerate(levels))
    return Plan(tuple(levels), seconds, damage, nbytes, False)


def order(plan: Plan) -> tuple[float, float, int]:
    """Least damage, then fastest, then KV before text: a total order, so choices are deterministic."""
    return (round(plan.damage, 12), round(plan.predicted_s, 9), plan.is_text)


def choose(costs: Costs, rate: float, deadline_s: float) -> Plan:
    """The least-damage plan whose predicted TTFT meets ``deadline_s`` at ``rate`` bytes/s; when none
    does, the fastest plan (``meets=False``)."""
    from kvstack.diagnose.knapsack import allocate

    if not rate > 0 or not deadline_s > 0:
        raise InputError(f"rate {rate!r} B/s and deadline {deadline_s!r} s must be positive")
    # sizes rounded up and the budget down: an allocation that fits also fits in exact seconds
    sizes = [{lv: math.ceil(_US * layer_seconds(costs, rate, i, lv)) for lv in costs.levels}
             for i in range(len(costs.bytes))]
    try:
        levels = allocate(costs.damage, sizes, math.floor(_US * (deadline_s - fixed_seconds(costs, rate)))).choices
    except BudgetError:  # no level mix fits: its fastest one competes with the text on time alone
        levels = tuple(
            min(costs.levels, key=lambda lv, i=i: (layer_seconds(costs, rate, i, lv), costs.damage[i][lv], lv))
            for i in range(len(costs.bytes)))
    candidates = [predict(costs, rate, levels), predict(costs, rate, ())]
    meeting = [p for p in candidates if p.predicted_s <= deadline_s + 1e-9]
    if meeting:
        best = min(meeting, key=order)
        return Plan(best.levels, best.predicted_s, best.damage, best.bytes, True)
    return min(candidates, key=lambda p: (round(p.predicted_s, 9), round(p.damage, 12), p.is_text))


def plan_recipe(plan: Plan, group: int = 64) -> str:
    """The recipe string of a KV plan (``int4:g64 > int8:g64@layers0-1 ...``)."""
    from kvstack.diagnose.knapsack import compose_recipe

    if plan.is_text:
        raise InputError("a text plan has no recipe: the receiver prefills the text")
    return compose_recipe(plan.levels, group)
