"""Paired comparison of a recipe with the full cache, pooled over sample sets: is a loss real or noise?

A 135M-270M model answers RULER's multi-key needles about half the time, so many samples sit on a
knife's edge and any perturbation flips some of them both ways; at n = 40 a recipe can read 89% or
105% of the full cache by chance. Each recipe row is paired with the full cache's (``identity``) row
of the same sample (model, weights dtype, seed, task, length, index, device), then pooled over
seeds and files: right answers, answers *lost* (full right, recipe wrong) and *gained*, the
relative score with a bootstrap 95% interval over samples, the exact two-sided McNemar p-value
(a binomial test on the discordant pairs) and the mean change of the gold answer's NLL per token,
a graded signal that needs no flip at all.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import defaultdict
from dataclasses import dataclass

from kvstack.eval.report import FULL


@dataclass(frozen=True)
class Pair:
    """One sample answered by the full cache and by a recipe."""

    full: float  # contains-accuracy of the full cache's answer (0/1 for single answers)
    recipe: float
    dnll: float | None  # gold-answer NLL per token, recipe minus full


@dataclass(frozen=True)
class PairedStats:
    model: str
    task: str
    length: int
    recipe: str
    seeds: tuple[int, ...]
    n: int
    full_right: float
    right: float
    lost: int
    gained: int
    relative: float | None
    low: float | None  # bootstrap 95% interval of ``relative``
    high: float | None
    p_mcnemar: float
    dnll: float | None  # mean over pairs that carry both NLLs
    dnll_se: float | None
    ratio_fp16: float | None


def mcnemar_exact(lost: int, gained: int) -> float:
    """Two-sided exact McNemar p-value: the chance of a split at least this uneven among ``lost + gained``
    discordant pairs if losing and gaining were equally likely."""
    n = lost + gained
    if n == 0:
        return 1.0
    k = min(lost, gained)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def bootstrap_relative(pairs: list[Pair], draws: int = 2000, seed: int = 0) -> tuple[float, float] | None:
    """95% percentile interval of sum(recipe) / sum(full) over samples drawn with replacement (seeded)."""
    if not pairs or not sum(p.full for p in pairs):
        return None
    rng = random.Random(seed)
    values = []
    for _ in range(draws):
        draw = [pairs[rng.randrange(len(pairs))] for _ in pairs]
        full = sum(p.full for p in draw)
        if full:
            values.append(sum(p.recipe for p in draw) / full)
    values.sort()
    return values[int(0.025 * (len(values) - 1))], values[int(0.975 * (len(values) - 1))]


def same_recipe_key(text: str) -> str:
    """Spellings of one recipe share a key (``int4`` and ``int4:axis=channel,g32``): its canonical text
    (:func:`kvstack.grammar.syntax.canonical_recipe`, read with today's defaults); text that does not parse is its
    own key."""
    from kvstack.grammar.syntax import canonical_or_none

    return canonical_or_none(text) or text


def _today(name: str) -> str | None:
    """What a preset name stands for now (None if it is no preset any more)."""
    from kvstack.errors import RecipeError
    from kvstack.grammar.presets import expand

    try:
        return expand(name)
    except RecipeError:
        return None


def _sample_key(r: dict) -> tuple:
    return r["model"], r.get("dtype"), r.get("seed"), r["task"], r["length"], r["index"], r.get("device")


def pair_rows(rows: list[dict], against: str = FULL) -> dict[tuple, tuple[list[Pair], set[int], list[float]]]:
    """``(model, task, length, recipe) -> (pairs, seeds, ratios)`` over every ``ok`` row that has a row of the
    ``against`` recipe (default: the full cache) for the same sample; a later row of the same cell replaces an
    earlier one (resumed runs); spellings of one recipe pool: by the ``canonical`` text a row recorded (every
    default written out as it was when it ran), else by :func:`same_recipe_key` of what a preset name stood for then
    (``expanded``) or of the recipe."""
    ok, names, keys = {}, {}, {}
    for r in rows:
        if r.get("status") == "ok" and r.get("contains") is not None:
            text = r.get("expanded") or r["recipe"]  # a preset name as it was when the row ran
            # what the row ran, as it recorded it (defaults of that day); older rows are read with today's
            today = keys.setdefault(text, same_recipe_key(text))
            same = r.get("canonical") or today
            if same != today:  # its text means something else now: shown as what ran
                label = same
            else:
                label = r["recipe"] if text == r["recipe"] or _today(r["recipe"]) == text else text
            if len(label) < len(names.get(same, label + " ")):
                names[same] = label  # shown under its shortest spelling (a preset's name while it means this)
            ok[_sample_key(r) + (same,)] = r
    full_key = same_recipe_key(against)
    full = {k[:-1]: r for k, r in ok.items() if k[-1] == full_key}
    out: dict[tuple, tuple[list[Pair], set[int], list[float]]] = defaultdict(lambda: ([], set(), []))
    for key, r in ok.items():
        f = full.get(key[:-1])
        if f is None or key[-1] == full_key:
            continue
        dnll = None
        if r.get("answer_tokens") and f.get("answer_tokens"):
            dnll = r["answer_nll_sum"] / r["answer_tokens"] - f["answer_nll_sum"] / f["answer_tokens"]
        pairs, seeds, ratios = out[(r["model"], r["task"], r["length"], names[key[-1]])]
        pairs.append(Pair(float(f["contains"]), float(r["contains"]), dnll))
        seeds.add(r.get("seed"))
        if r.get("ratio_fp16"):
            ratios.append(r["ratio_fp16"])
    return dict(out)


def paired_stats(rows: list[dict], against: str = FULL) -> list[PairedStats]:
    """One :class:`PairedStats` per (model, task, length, recipe) with at least one sample paired with a row of
    ``against`` (default: the full cache; a preset, to ask whether a candidate beats it on the same samples)."""
    stats = []
    for (model, task, length, recipe), (pairs, seeds, ratios) in sorted(pair_rows(rows, against).items()):
        full, right = sum(p.full for p in pairs), sum(p.recipe for p in pairs)
        lost = sum(1 for p in pairs if p.full >= 1 and p.recipe < 1)
        gained = sum(1 for p in pairs if p.recipe >= 1 and p.full < 1)
        ci = bootstrap_relative(pairs)
        d = [p.dnll for p in pairs if p.dnll is not None]
        stats.append(PairedStats(
            model, task, length, recipe, tuple(sorted(s for s in seeds if s is not None)), len(pairs), full, right,
            lost, gained, right / full if full else None, ci[0] if ci else None, ci[1] if ci else None,
            mcnemar_exact(lost, gained), statistics.fmean(d) if d else None,
            statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else None,
            statistics.median(ratios) if ratios else None,
        ))
    return stats


def markdown(stats: list[PairedStats], against: str = FULL) -> str:
    """A table: one line per (model, task, length, recipe); columns name ``against`` unless it is the full cache."""
    base = "full" if same_recipe_key(against) == same_recipe_key(FULL) else f"`{against}`"
    lines = [f"| model | task | length | recipe | seeds | n | {base} | recipe | lost / gained | of {base} (95% CI) | "
             "McNemar p | Δ answer NLL/token | vs fp16 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in stats:
        rel = "-" if s.relative is None else f"{s.relative:.0%}"
        if s.low is not None:
            rel += f" ({s.low:.0%}-{s.high:.0%})"
        d = "-" if s.dnll is None else f"{s.dnll:+.3f}" + ("" if s.dnll_se is None else f" ± {s.dnll_se:.3f}")
        ratio = "-" if s.ratio_fp16 is None else f"{s.ratio_fp16:.1f}x"
        lines.append(f"| {s.model} | {s.task} | {s.length} | `{s.recipe}` | {','.join(map(str, s.seeds))} | {s.n} | "
                     f"{s.full_right:g} | {s.right:g} | {s.lost} / {s.gained} | {rel} | {s.p_mcnemar:.2f} | {d} | "
                     f"{ratio} |")
    return "\n".join(lines)
