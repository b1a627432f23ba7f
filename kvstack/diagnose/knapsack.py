"""Choose one width per layer: least summed sensitivity within a byte budget.

A multiple-choice knapsack, solved exactly by dynamic programming over the Pareto front
of (bytes, damage) pairs layer by layer; fronts stay small because layers share a few
byte sizes. Damage is assumed additive across layers (measured one layer at a time);
:func:`kvstack.diagnose.sensitivity.measure` plus a final measurement of the chosen
recipe check how well that holds.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvstack.errors import BudgetError
from kvstack.stack import scope_text


@dataclass(frozen=True)
class Allocation:
    choices: tuple[str, ...]  # option per layer
    total_bytes: int
    total_damage: float


def allocate(costs: list[dict[str, float]], sizes: list[dict[str, int]], budget: int) -> Allocation:
    """Exact minimum of ``sum(costs[l][choice_l])`` subject to ``sum(sizes[l][choice_l]) <= budget``."""
    if len(costs) != len(sizes) or not costs:
        raise BudgetError("diagnose: one cost and one size table per layer are needed")
    cheapest = sum(min(s.values()) for s in sizes)
    if budget < cheapest:
        raise BudgetError(
            f"a budget of {budget} bytes is below the smallest allocation ({cheapest} bytes, every layer at its "
            "fewest bits); raise --budget-bits or add a smaller option"
        )
    front: list[tuple[int, float, tuple[str, ...]]] = [(0, 0.0, ())]
    for cost, size in zip(costs, sizes, strict=True):
        cand = [(b + size[o], d + cost[o], ch + (o,)) for b, d, ch in front for o in cost if b + size[o] <= budget]
        cand.sort(key=lambda t: (t[0], t[1]))
        front = []
        for b, d, ch in cand:  # keep only points that lower the damage as bytes grow
            if not front or d < front[-1][1]:
                front.append((b, d, ch))
    b, d, ch = min(front, key=lambda t: (t[1], t[0]))
    return Allocation(choices=ch, total_bytes=b, total_damage=d)


def compose_recipe(choices: tuple[str, ...], group: int) -> str:
    """A recipe string: the most common option unscoped, the others scoped to layer runs."""
    from kvstack.diagnose.sensitivity import option_stage

    base = max(set(choices), key=lambda o: (choices.count(o), o))
    parts = [option_stage(base, group)]
    i = 0
    while i < len(choices):
        j = i
        while j + 1 < len(choices) and choices[j + 1] == choices[i]:
            j += 1
        if choices[i] != base:
            parts.append(option_stage(choices[i], group) + scope_text(set(range(i, j + 1))))
        i = j + 1
    return " > ".join(parts)
