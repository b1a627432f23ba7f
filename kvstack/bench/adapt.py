"""Bandwidth adaptation (CacheGen's idea): given a link rate and a time-to-first-token deadline,
choose per layer the quantization level of its wire chunks, and how many trailing tokens to
resend as text instead of KV, so that the predicted TTFT meets the deadline with the least
estimated damage.

Everything the choice uses is measured once per context (:class:`Costs`): the wire bytes of
every layer at every level, a damage proxy per (layer, level) (KL to the full cache with that
layer alone quantized, as ``kvstack diagnose`` measures it), decode seconds per level, the
first token's compute, and the full-text prefill. The predicted TTFT is

    shared bytes / rate + sum over layers of scale * (bytes / rate + decode) + first token
    + tail / tokens * (text prefill - first token)

where ``scale = (tokens - tail) / tokens`` shrinks the KV that is still sent. Transfer and
decode are added, not overlapped: a conservative prediction. Damage is summed over layers
(as in ``kvstack diagnose``) and, conservatively, not reduced by the tail; sending everything
as text has damage 0. The per-tail choice is an exact multiple-choice knapsack
(:func:`kvstack.diagnose.knapsack.allocate`, times in whole microseconds).
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
    """A choice: ``levels`` per layer (empty when everything goes as text), ``tail`` trailing
    tokens resent as text, and what it is predicted to cost."""

    levels: tuple[str, ...]
    tail: int
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
        text = " ".join(f"{lv}x{n}" for lv, n in counts.items())
        return text + (f" + {self.tail} tok text" if self.tail else "")


def layer_seconds(costs: Costs, rate: float, layer: int, level: str, scale: float = 1.0) -> float:
    """Predicted seconds one layer at one level adds: its transfer plus its share of decoding."""
    share = costs.decode_s[level] / len(costs.bytes)
    return scale * (costs.bytes[layer][level] / rate + share)


def fixed_seconds(costs: Costs, rate: float, tail: int) -> float:
    """Seconds a KV plan costs whatever its levels: shared bytes, first token, tail prefill."""
    extra = max(costs.text_s - costs.first_token_s, 0.0) * tail / costs.tokens
    return costs.shared_bytes / rate + costs.first_token_s + extra


def predict(costs: Costs, rate: float, levels: tuple[str, ...], tail: int = 0) -> Plan:
    """The predicted cost of a given choice (``levels=()``: everything as text)."""
    if not levels:
        seconds = costs.text_bytes / rate + costs.text_s
        return Plan((), costs.tokens, seconds, 0.0, costs.text_bytes, False)
    scale = (costs.tokens - tail) / costs.tokens
    seconds = fixed_seconds(costs, rate, tail) + sum(
        layer_seconds(costs, rate, i, lv, scale) for i, lv in enumerate(levels))
    nbytes = costs.shared_bytes + round(scale * sum(costs.bytes[i][lv] for i, lv in enumerate(levels)))
    damage = sum(costs.damage[i][lv] for i, lv in enumerate(levels))
    return Plan(tuple(levels), tail, seconds, damage, nbytes, False)


def tails(tokens: int, step: int) -> list[int]:
    """Candidate text tails: 0, step, 2 step, ... below ``tokens`` (all of it is the text plan)."""
    if step < 1:
        raise InputError(f"tail step {step}: give a positive number of tokens")
    return list(range(0, tokens, step))


def _key(plan: Plan) -> tuple[float, float, int]:
    # least damage, then fastest, then fewest tail tokens: a total order, so the choice is deterministic
    return (round(plan.damage, 12), round(plan.predicted_s, 9), plan.tail)


def choose(costs: Costs, rate: float, deadline_s: float, tail_step: int = 256) -> Plan:
    """The least-damage plan whose predicted TTFT meets ``deadline_s`` at ``rate`` bytes/s; when none
    does, the fastest plan (``meets=False``)."""
    from kvstack.diagnose.knapsack import allocate

    if not rate > 0 or not deadline_s > 0:
        raise InputError(f"rate {rate!r} B/s and deadline {deadline_s!r} s must be positive")
    candidates = [predict(costs, rate, ())]
    for tail in tails(costs.tokens, tail_step):
        scale = (costs.tokens - tail) / costs.tokens
        budget = deadline_s - fixed_seconds(costs, rate, tail)
        # sizes rounded up and the budget down: an allocation that fits also fits in exact seconds
        sizes = [{lv: math.ceil(_US * layer_seconds(costs, rate, i, lv, scale)) for lv in costs.levels}
                 for i in range(len(costs.bytes))]
        try:
            pick = allocate(costs.damage, sizes, math.floor(_US * budget))
        except BudgetError:
            fastest = tuple(
                min(costs.levels, key=lambda lv, i=i: (layer_seconds(costs, rate, i, lv), costs.damage[i][lv], lv))
                for i in range(len(costs.bytes)))
            candidates.append(predict(costs, rate, fastest, tail))
            continue
        candidates.append(predict(costs, rate, pick.choices, tail))
    meeting = [p for p in candidates if p.predicted_s <= deadline_s + 1e-9]
    if meeting:
        best = min(meeting, key=_key)
        return Plan(best.levels, best.tail, best.predicted_s, best.damage, best.bytes, True)
    return min(candidates, key=lambda p: (round(p.predicted_s, 9), round(p.damage, 12), p.tail))


def plan_recipe(plan: Plan, group: int = 64) -> str:
    """The recipe string of a KV plan (``int4:g64 > int8:g64@layers0-1 ...``)."""
    from kvstack.diagnose.knapsack import compose_recipe

    if plan.is_text:
        raise InputError("a text plan has no recipe: the receiver prefills the text")
    return compose_recipe(plan.levels, group)
