"""Readable text for a Plan: layers collapsed into groups of identical cost, totals, and a
comparison table when several models or what-ifs are planned together."""

from __future__ import annotations

from collections.abc import Sequence

from kvstack.plan.planner import LayerPlan, Plan
from kvstack.plan.units import format_bytes, format_context, format_number


def index_ranges(indices: Sequence[int], limit: int = 26) -> str:
    """``0-4,6-10,12`` for a sorted list of layer indices, shortened with ``…`` past ``limit``."""
    parts: list[str] = []
    start = prev = None
    for i in list(indices) + [None]:
        if start is not None and (i is None or i != prev + 1):
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = None
        if i is not None and start is None:
            start = i
        prev = i
    text = ",".join(parts)
    if len(text) > limit:
        cut = text[:limit].rsplit(",", 1)[0]
        text = f"{cut},…"
    return text


def _group_key(layer: LayerPlan) -> tuple:
    return (
        layer.kind,
        layer.tokens_held,
        layer.bytes,
        layer.layer.describe(),
        layer.precision.label,
    )


def layer_groups(plan: Plan, per_layer: bool = False) -> list[list[LayerPlan]]:
    """Layers grouped by identical (kind, tokens, bytes, shape, precision), in first-seen order."""
    if per_layer:
        return [[layer] for layer in plan.layers]
    groups: dict[tuple, list[LayerPlan]] = {}
    for layer in plan.layers:
        groups.setdefault(_group_key(layer), []).append(layer)
    return list(groups.values())


def render_plan(plan: Plan, per_layer: bool = False) -> str:
    spec = plan.spec
    head = [
        f"{spec.name}: {spec.summary()}",
        f"  cache {plan.storage.label}; context {plan.context:,} ({format_context(plan.context)})"
        f" x batch {plan.batch}",
    ]
    rows = [("layers", "kind", "cached per token", "tokens held", "bytes/token", "bytes")]
    for group in layer_groups(plan, per_layer):
        first = group[0]
        where = index_ranges([layer.index for layer in group])
        if len(group) > 1:
            where += f" ({len(group)})"
        rows.append(
            (
                where,
                first.kind,
                first.layer.describe(),
                f"{first.tokens_held:,}",
                format_number(float(first.bits_per_token / 8)),
                format_bytes(first.bytes * len(group)),
            )
        )
    rows.append(
        (
            "total",
            "",
            "",
            "",
            format_number(plan.bytes_per_token),
            format_bytes(plan.total_bytes),
        )
    )
    lines = head + [""] + _table(rows, right=(3, 4, 5), rule_before_last=True)
    lines.append(
        f"  total {plan.total_bytes:,} bytes; per token: "
        f"{format_number(plan.bytes_per_token)} bytes with every layer holding it, "
        f"{format_number(round(plan.average_bytes_per_token, 1))} on average at this context"
    )
    if plan.batch > 1:
        lines.append(
            f"  per sequence {format_bytes(plan.bytes_per_sequence)} "
            f"({plan.bytes_per_sequence:,} bytes) x batch {plan.batch}"
        )
    if spec.max_position_embeddings and plan.context > spec.max_position_embeddings:
        lines.append(
            f"  warning: context {plan.context:,} exceeds the model's max_position_embeddings "
            f"({spec.max_position_embeddings:,})"
        )
    if plan.storage.recipe is not None:
        bound = "" if plan.storage.recipe.exact else "; an upper bound: it depends on the data"
        lines.append(f"  recipe (analytic estimate{bound}):")
        lines.extend(f"    {text}" for text in plan.storage.recipe.explain())
    lines.extend(f"  note: {note}" for note in spec.notes)
    return "\n".join(lines)


def render_comparison(plans: Sequence[Plan]) -> str:
    """One row per plan with its total, bytes/token and ratio to the first row."""
    base = plans[0]
    lines = [f"comparison at context {format_context(base.context)} x batch {base.batch}:"]
    rows = [("model", "cache", "bytes/token", "vs first")]
    for p in plans:
        label = p.model + (f" [{p.storage.recipe.text}]" if p.storage.recipe else "")
        if p.storage.precision.label != base.storage.precision.label:
            label += f" ({p.storage.precision.label})"
        rows.append(
            (label, format_bytes(p.total_bytes), format_number(p.bytes_per_token), ratio(p, base))
        )
    lines += _table(rows, right=(1, 2, 3))
    return "\n".join(lines)


def ratio(p: Plan, base: Plan) -> str:
    if base.total_bytes == 0:
        return "-"
    r = p.total_bytes / base.total_bytes
    if p is base:
        return "1.00x"
    return f"{r:.3g}x ({(r - 1) * 100:+.1f}%)"


def _table(
    rows: list[tuple], right: tuple[int, ...] = (), rule_before_last: bool = False
) -> list[str]:
    widths = [max(len(str(row[c])) for row in rows) for c in range(len(rows[0]))]

    def fmt(row: tuple) -> str:
        cells = [
            str(cell).rjust(w) if c in right else str(cell).ljust(w)
            for c, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  " + "  ".join(cells).rstrip()

    out = [fmt(row) for row in rows]
    if rule_before_last:
        out.insert(len(out) - 1, "  " + "-" * (sum(widths) + 2 * (len(widths) - 1)))
    return out
