"""Issue 6's stacking study: selection x low rank x cross-layer x quantization on kvstack-retrieval at 4k.

    nice .venv/bin/python benchmarks/stacking.py [--confirm-samples 8] [--final-samples 24]  # every stage, resumable
    .venv/bin/python benchmarks/stacking.py --report                     # tables, plots, frontier.md of finished rows
    .venv/bin/python benchmarks/stacking.py --out OTHER_DIR --report     # e.g. a copy of reports/stacking (run 3)

Every recipe is scored on the eval harness's ``niah_single``, ``niah_multikey`` and ``multihop``
as accuracy *relative to the full cache on the same samples*, against the bytes its cache really
holds per context token and the ratio to an fp16 dense cache (4,096 B/token on this model).
CPU is scarce, so the search is staged (successive halving) and every stage is resumable:

0. ``axes``: every option of every axis *alone* (plus ``ANCHORS``) on one sample of each task. An
   option whose gold-answer NLL rises by more than ``AXIS_MAX_NLL`` on its own is not stacked
   further: stacking only adds error, so every combination containing it would fail too.
1. ``bytes``: the combinations of the surviving options (and ``EXTRA``), each compressed once from
   one prefill: exact bytes (``bytes.jsonl``), no generation. Kept: recipes that reach at least
   ``MIN_RATIO`` vs fp16, minus no-ops (a stage that saved no byte, e.g. MiniCache merging
   nothing), and of those the ones just past a band (``band <= ratio < BAND_SPAN * band``).
2. ``screen1``: one ``niah_single`` sample each; the ``--screen1-keep`` best per band go on.
3. ``screen2``: one sample of each task; the ``--screen2-keep`` best per band go on.
4. ``confirm``: ``--confirm-samples`` samples of each task; the frontier comes from these only.
5. ``final``: the ``--final-keep`` best confirmed recipes per band and group, the first study's presets and
   ``FINAL_EXTRA`` get ``--final-samples`` samples of the needle tasks (multihop stays at the confirm count:
   the full cache answers none of it, so more samples add no accuracy to compare). The named recipes
   come from these when this stage ran.

Scores: mean over the tasks the full cache answers of accuracy relative to it (capped at 1), ties broken
by the gold answer's NLL delta. Each screen ranks on its own samples only, so a resumed study repeats
its choices.

Question-aware recipes (Q2C: they score tokens by the question, so the cache is built per question)
and question-agnostic ones (built once, before any question) are ranked apart at every stage: each
screen keeps its best per band *of each group*, and the report names ``best:Nx`` (agnostic) and
``qa:Nx`` (question-aware) winners separately. The harness passes every sample's question_ids.

One prefill per sample feeds all recipes of a stage (the harness's ``compress_many``); results go
to ``--out`` (default ``benchmarks/reports/stacking_run4/``; the first study, on run 3 of the model,
is in ``benchmarks/reports/stacking/``) as they finish, so a crash loses nothing. To add a recipe to
the search, add one string to an axis (or to ``EXTRA``).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import platform
import sys
from collections import defaultdict
from pathlib import Path

OUT = Path(__file__).resolve().parent / "reports" / "stacking_run4"  # --out changes it
MODEL = "kvstack-retrieval"
TASKS = ["niah_single", "niah_multikey", "multihop"]
LENGTH = 4096
FULL = "identity"
BANDS = (4, 8, 16, 32)  # name the best recipe at each ratio vs fp16 dense
MIN_RATIO = 3.0  # grid recipes below this ratio vs fp16 are not screened
MAX_NEW_TOKENS = 10  # answers are 7-digit numbers (one token per digit) or 1-4-token names; decoding dominates CPU
BAND_SPAN = 1.6  # screen recipes with band <= ratio < BAND_SPAN * band

# --- the search space: one axis per family; "" = the family is left out -------------------------------
# Selection keeps each well-scored token's SPAN successors (`span=N`, RESULTS.md "span=N"): without it every
# scored selector lost the needle's later digits, and the first study dropped them all at the axis stage.
SPAN = 16
SELECTION = [
    "", *(f"q2c:{f},span={SPAN}" for f in (0.5, 0.25, 0.125, 0.1, 0.0625)),
    *(f"keydiff:{f},span={SPAN}" for f in (0.25, 0.125)), f"snapkv:0.25,span={SPAN}", f"expected:0.25,span={SPAN}",
]
PROJECTION = [
    "", "svd:rank=32,rope=pre", "svd:rank=24,rope=pre", "svd:rank=16,rope=pre", "svd:rank=12,rope=pre",
    "svd:rank=8,rope=pre", "svd:rank=16", "latent:rank=128", "latent:rank=64", "latent:rank=32",
    "xkv:group=2,rank=96", "xkv:group=2,rank=48", "xkv:group=2,rank=32", "xkv:group=4,rank=64",
]
CROSSLAYER = ["", "minicache"]
QUANT = ["", "int8", "int4", "int3", "int2", "int4:axis=channel", "int2:axis=channel", "kivi:2,residual=32",
         "kivi:4,residual=32", "kivi:2", "kvquant:3", "kvquant:4", "gear:2", "gear:4"]
PROJECTION_BITS = {"int8": 8, "int4": 4, "int3": 3, "int2": 2}  # quantizer -> coefficient bits on a projection
EXTRA: list[str] = [
    "svd:rank=16,rope=pre,bits=4,qgroup=256", "svd:rank=12,rope=pre,bits=4,qgroup=256",
    "svd:rank=24,rope=pre,bits=2,qgroup=256", "svd:rank=32,rope=pre,bits=2,qgroup=256",
    "latent:rank=64,bits=4,qgroup=256", "latent:rank=96,bits=3,qgroup=256",
    "svd:rank=16,rope=pre > int4", "svd:rank=24,rope=pre > int2",
    # keys are far lower rank than values before RoPE (RESULTS.md, low-rank section): spend the bytes on values
    "svd:rank=8,rope=pre,target=k,bits=4,qgroup=256 > svd:rank=24,target=v,bits=4,qgroup=256",
    "svd:rank=8,rope=pre,target=k,bits=4,qgroup=256 > svd:rank=16,target=v,bits=4,qgroup=256",
    "svd:rank=12,rope=pre,target=k,bits=4,qgroup=256 > svd:rank=20,target=v,bits=4,qgroup=256",
    "svd:rank=16,rope=pre,target=k,bits=4,qgroup=256 > svd:rank=32,target=v,bits=2,qgroup=256",
    "svd:rank=8,rope=pre,target=k,bits=4,qgroup=256 > svd:rank=8,target=v,bits=4,qgroup=256",
    "svd:rank=8,rope=pre,bits=4,qgroup=256", "svd:rank=12,rope=pre,bits=3,qgroup=256",
    # xkv's per-context bases dominate its bytes at 4k: fewer directions shared by more layers
    "xkv:group=4,rank=48,bits=2", "xkv:group=4,rank=32,bits=2", "xkv:group=8,rank=64,bits=2",
    "xkv:group=8,rank=48,bits=2",
    # span selection then low rank with grouped coefficient scales (latent/xkv need the same tokens in every head,
    # which per-head selection breaks, so svd is the low-rank stage that follows it)
    f"q2c:0.25,span={SPAN} > svd:rank=32,rope=pre,bits=2,qgroup=256",
    f"q2c:0.125,span={SPAN} > svd:rank=32,rope=pre,bits=4,qgroup=256",
    f"q2c:0.25,span={SPAN} > svd:rank=24,rope=pre,bits=3,qgroup=256",
    f"keydiff:0.25,span={SPAN} > svd:rank=32,rope=pre,bits=2,qgroup=256",
    f"keydiff:0.25,span={SPAN} > svd:rank=24,rope=pre,bits=3,qgroup=256",
]
# always screened and confirmed: reference points of the plots, and the first study's presets, so a new winner is
# compared with the old one on the same samples
OLD_PRESETS = ["xkv:group=2,rank=96,bits=8", "latent:rank=96,bits=3,qgroup=256", "xkv:group=4,rank=64,bits=2",
               "xkv:group=4,rank=32,bits=2"]
ANCHORS = ["identity", "int8", "int4", *OLD_PRESETS]
# 26.9x below fp16 with 8/8 single needles in RESULTS.md's span section, but in [1.6 x 16, 32): never "just past"
# a band, so no screen saw them; the final stage measures them beside the 16x winners
FINAL_EXTRA = [f"q2c:0.125,span={SPAN} > int4", f"keydiff:0.125,span={SPAN} > int4"]
FINAL_TASKS = TASKS[:2]  # the tasks the full cache answers (multihop: 0/8 on run 4)
SELECTION_SAME_TOKENS = ("", "streaming")  # latent/xkv need every head to keep the same tokens


def combine(select: str, project: str, cross: str, quant: str) -> str | None:
    """One recipe from one choice per axis, or None where the stages do not compose."""
    per_head = select and not select.startswith(SELECTION_SAME_TOKENS[1])
    if project.startswith(("latent", "xkv")) and per_head:
        return None  # evicting per head first would store their rows dense (counted): no saving
    if cross and project:
        return None  # minicache merges dense rows; a projected layer has none left to merge
    stages = [s for s in (select, cross) if s]
    if project:
        if quant.startswith("kivi"):
            return None
        bits = PROJECTION_BITS.get(quant.split(":")[0]) if quant else None
        if quant and (bits is None or ":" in quant):
            return None  # group variants only apply to dense rows
        stages.append(project + (f",bits={bits}" if bits else ""))
    elif quant:
        stages.append(quant)
    return " > ".join(stages) or None


AXES = (SELECTION, PROJECTION, CROSSLAYER, QUANT)
AXIS_MAX_NLL = 1.0  # an option alone costing more gold-answer NLL than this (nats/token) is not stacked further


def grid(keep: set[str] | None = None) -> list[str]:
    """Every composable combination of the axes' options (only options in ``keep``, when given), plus EXTRA."""
    axes = [[o for o in axis if not o or keep is None or o in keep] for axis in AXES]
    out = list(ANCHORS)
    for s in axes[0]:
        for p in axes[1]:
            for c in axes[2]:
                for q in axes[3]:
                    r = combine(s, p, c, q)
                    if r and r not in out:
                        out.append(r)
    return out + [r for r in EXTRA if r not in out]


@functools.cache
def question_aware(recipe: str) -> bool:
    """True when the recipe scores tokens by the question (Q2C): its cache is built per question."""
    from kvstack.stack import Recipe

    return Recipe.parse(recipe).needs_question


GROUPS = (False, True)  # question-agnostic, question-aware: ranked apart everywhere


def axis_options() -> list[str]:
    return [o for axis in AXES for o in axis if o]


def surviving_options(max_nll: float = AXIS_MAX_NLL) -> set[str]:
    """Options whose cost alone (mean gold-answer NLL delta over the tasks) leaves room to stack more.
    Stacking only adds error, so a combination containing a failed option is not worth screening.
    Only tasks the full cache answers count, as in ``score``: on run 4, multihop (full cache 0/8, gold NLL
    ~6 nats) would otherwise drop KeyDiff, lossless on both needle tasks, for +6.7 nats on an unanswered task."""
    sums = summaries()
    answered = [t for t, s in sums.get(FULL, {}).items() if s.get("contains")]
    out = set()
    for o in axis_options():
        deltas = [sums.get(o, {}).get(t, {}).get("answer_nll_delta") for t in answered]
        deltas = [d for d in deltas if d is not None]
        if deltas and statistics_mean(deltas) <= max_nll:
            out.add(o)
    return out


# --- results -------------------------------------------------------------------------------------------
def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    from kvstack.eval.results import read_rows

    return read_rows(path)[0]


def fp16_ratio(row: dict, fp16_bytes_per_token: float) -> float:
    return fp16_bytes_per_token * row["context_tokens"] / max(row["cache_bytes"], 1)


def wilson(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval of a binomial proportion k/n (what n samples can tell apart)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def summaries(min_n: int = 1, samples: int | None = None) -> dict[str, dict[str, dict]]:
    """recipe -> task -> the harness summary (relative accuracy, answer NLL delta, bytes), paired with identity.
    ``samples``: only the first that many samples of each task, so a screen ranks on the rows it ran and a
    resumed study repeats its choices instead of re-ranking with later stages' rows."""
    from kvstack.eval.report import summarize

    rows = [r for r in read_jsonl(OUT / "results.jsonl") if samples is None or r["index"] < samples]
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    for s in summarize(rows):
        if s["n"] >= min_n:
            out[s["recipe"]][s["task"]] = s
    return out


def same_verdicts() -> dict[tuple[str, str], tuple[int, int]]:
    """(recipe, task) -> (samples judged right/wrong exactly as the full cache judged them, samples paired):
    finer than k/n when the full cache itself fails many samples (multi-key: which ones it gets matters)."""
    rows = [r for r in read_jsonl(OUT / "results.jsonl") if r.get("status") == "ok" and "contains" in r]
    full = {(r["task"], r["index"]): r["contains"] for r in rows if r["recipe"] == FULL}
    out: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for r in rows:
        ref = full.get((r["task"], r["index"]))
        if ref is not None:
            out[(r["recipe"], r["task"])][0] += int(r["contains"] == ref)
            out[(r["recipe"], r["task"])][1] += 1
    return {k: (v[0], v[1]) for k, v in out.items()}


def fp16_per_token() -> float:
    meta = json.loads((OUT / "meta.json").read_text())
    return meta["fp16_bytes_per_token"]


def recipe_ratio(sums: dict[str, dict]) -> float:
    return fp16_per_token() / statistics_mean([s["bytes_per_token"] for s in sums.values()])


def statistics_mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def score(sums: dict[str, dict], tasks: list[str]) -> tuple[float, float]:
    """(mean relative accuracy over tasks, minus mean answer-NLL delta): larger is better, ties by likelihood."""
    # a lucky sample is not better than the full cache (cap at 1); a task the full cache never answered has no
    # relative accuracy and is left out (a recipe that ran no sample of it gets 0)
    rel = []
    for s in (sums[t] for t in tasks if t in sums):
        if s.get("relative") is not None:
            rel.append(min(s["relative"], 1.0))
        elif s.get("contains_full") != 0:
            rel.append(0.0)
    nll = [sums[t].get("answer_nll_delta") or 0.0 for t in tasks if t in sums]
    return (statistics_mean(rel) if rel else 0.0, -statistics_mean(nll) if nll else 0.0)


# --- stages --------------------------------------------------------------------------------------------
def stage_bytes(model, tok, recipes: list[str]) -> None:
    """Compress one sample with every recipe (one prefill): exact bytes, before any generation."""
    from kvstack.api import compress_many
    from kvstack.eval.prompt import format_sample
    from kvstack.eval.results import ResultsWriter
    from kvstack.eval.tasks import get_task
    from kvstack.stack import Recipe

    path = OUT / "bytes.jsonl"
    done = {r["recipe"] for r in read_jsonl(path) if "cache_bytes" in r}  # failed rows are retried
    todo = [r for r in recipes if r not in done]
    if not todo:
        return
    sample = get_task(TASKS[0]).samples(tok, LENGTH, 1, 0)[0]
    prompt = format_sample(tok, sample)
    print(f"bytes: {len(todo)} recipes on one {prompt.context_ids.numel()}-token prefill", flush=True)
    with ResultsWriter(path) as w:
        for recipe, cache in compress_many(model, prompt.context_ids, [Recipe.parse(r) for r in todo],
                                           prompt.question_ids):
            if isinstance(cache, Exception):
                w.write({"recipe": recipe.text, "error": f"{type(cache).__name__}: {cache}"})
                continue
            w.write({"recipe": recipe.text, "cache_bytes": cache.nbytes, "context_tokens": cache.context_length,
                     "compress_s": cache.stats.get("compress_seconds")})


def byte_table() -> dict[str, dict]:
    return {r["recipe"]: r for r in read_jsonl(OUT / "bytes.jsonl")}


def drop_no_ops(recipes: list[str], sizes: dict[str, dict]) -> list[str]:
    """Drop a recipe when leaving one of its stages out gives the same bytes (e.g. minicache merging nothing):
    the stage changed nothing, so screening it again would only repeat the shorter recipe."""
    out = []
    for r in recipes:
        parts = [p.strip() for p in r.split(">")]
        shorter = [" > ".join(parts[:i] + parts[i + 1:]) for i in range(len(parts))] if len(parts) > 1 else []
        same = [o for o in shorter if o in sizes and sizes[o].get("cache_bytes") == sizes[r]["cache_bytes"]]
        if not same:
            out.append(r)
    return out


def run_grid(model, tok, recipes: list[str], tasks: list[str], samples: int, threads: int) -> None:
    from kvstack.eval.runner import EvalSpec, Runner

    recipes = list(dict.fromkeys([FULL, *recipes]))
    spec = EvalSpec(MODEL, recipes, tasks, [LENGTH], samples, threads=threads, max_new_tokens=MAX_NEW_TOKENS)
    print(Runner(spec, OUT / "results.jsonl", model=model, tokenizer=tok).run(), flush=True)


def in_band(ratio: float, band: int) -> bool:
    """The "Nx" band: at least N times smaller than fp16, less than 2N (so best:4x is not a 20x recipe)."""
    return band <= ratio < 2 * band


def near_bands(recipes: list[str], ratio: dict[str, float]) -> list[str]:
    """Recipes just past a band (``band <= ratio < BAND_SPAN * band``): the cheapest ways to reach it."""
    return [r for r in recipes if r in ANCHORS or any(b <= ratio[r] < BAND_SPAN * b for b in BANDS)]


def screened(recipes: list[str], tasks: list[str], per_band: int, samples: int = 1) -> list[str]:
    """Survivors of a screen: the ``per_band`` best-scoring recipes of each group in each ratio band, ranked on
    the screen's own ``samples`` per task."""
    sums = summaries(samples=samples)
    have = [r for r in recipes if r != FULL and all(t in sums.get(r, {}) for t in tasks)]
    ranked = sorted(have, key=lambda r: score(sums[r], tasks), reverse=True)
    out: list[str] = []
    for band in BANDS:
        for qa in GROUPS:
            inside = [r for r in ranked if question_aware(r) == qa and in_band(recipe_ratio(sums[r]), band)]
            out += [r for r in inside[:per_band] if r not in out]
    return [r for r in recipes if r in out or r in ANCHORS]


def finalists(per_band: int, confirm_samples: int) -> list[str]:
    """The ``per_band`` best confirmed recipes of each group in each band, the old presets and ``FINAL_EXTRA``."""
    sums = summaries(samples=confirm_samples)
    confirmed = [r for r in sums if r != FULL and all(sums[r].get(t, {}).get("n", 0) >= confirm_samples
                                                       for t in TASKS)]
    return list(dict.fromkeys(screened(confirmed, TASKS, per_band, confirm_samples) + OLD_PRESETS + FINAL_EXTRA))


def pareto(recipes: list[str], sums: dict, tasks: list[str]) -> list[str]:
    """Recipes no other recipe beats on both bytes and score (on these tasks)."""
    pts = {r: (recipe_ratio(sums[r]), score(sums[r], tasks)) for r in recipes}
    return [r for r in recipes if not any(
        o != r and pts[o][0] >= pts[r][0] and pts[o][1] >= pts[r][1] and pts[o] != pts[r] for o in recipes)]


def main() -> None:
    global OUT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the CPU is shared)")
    ap.add_argument("--screen1-keep", type=int, default=4,
                    help="recipes kept per ratio band and group after screen 1")
    ap.add_argument("--screen2-keep", type=int, default=2,
                    help="recipes kept per ratio band and group after screen 2")
    ap.add_argument("--confirm-samples", type=int, default=8)
    ap.add_argument("--final-keep", type=int, default=2, help="confirmed recipes per band and group in the final")
    ap.add_argument("--final-samples", type=int, default=24, help="needle-task samples per finalist")
    ap.add_argument("--stop-after", choices=("axes", "bytes", "screen1", "screen2", "confirm", "final"),
                    default="final")
    ap.add_argument("--report", action="store_true", help="only write the report of finished results")
    ap.add_argument("--out", type=Path, default=OUT, help="folder of the resumable results and the report")
    args = ap.parse_args()
    OUT = args.out.resolve()
    OUT.mkdir(parents=True, exist_ok=True)
    sys.modules.setdefault("stacking", sys.modules[__name__])  # run as a script: the report module shares OUT
    from stacking_report import report  # the tables and plots
    if args.report:
        print(report(args.confirm_samples, args.final_samples))
        return
    import torch
    import transformers

    from kvstack.eval.runner import load_model

    torch.set_num_threads(args.threads)
    model, tok = load_model(MODEL)
    elem = torch.empty((), dtype=torch.float16).element_size()
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    fp16 = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * elem
    (OUT / "meta.json").write_text(json.dumps({
        "fp16_bytes_per_token": fp16, "versions": f"torch {torch.__version__}, transformers "
        f"{transformers.__version__}, Python {platform.python_version()}, {platform.machine()} CPU, "
        f"{args.threads} threads"}))
    run_grid(model, tok, ANCHORS + axis_options(), TASKS, 1, args.threads)
    keep = surviving_options()
    print(f"axes: {len(keep)} of {len(axis_options())} options survive alone: {sorted(keep)}", flush=True)
    if args.stop_after == "axes":
        return
    all_recipes = grid(keep)
    stage_bytes(model, tok, all_recipes)
    sizes = byte_table()
    ok = [r for r in all_recipes if "cache_bytes" in sizes.get(r, {})]
    ratio = {r: fp16_ratio(sizes[r], fp16) for r in ok}
    pool = drop_no_ops([r for r in ok if ratio[r] >= MIN_RATIO or r in ANCHORS], sizes)
    print(f"grid {len(all_recipes)} recipes, {len(ok)} compress, {len(pool)} at >= {MIN_RATIO}x vs fp16", flush=True)
    if args.stop_after == "bytes":
        return
    pool = near_bands(pool, ratio)
    print(f"{len(pool)} recipes just past a band ({', '.join(f'{b}x' for b in BANDS)}): {pool}", flush=True)
    run_grid(model, tok, pool, TASKS[:1], 1, args.threads)
    pool = screened(pool, TASKS[:1], args.screen1_keep)
    print(f"screen 1 keeps {len(pool)}: {pool}", flush=True)
    if args.stop_after == "screen1":
        return
    run_grid(model, tok, pool, TASKS, 1, args.threads)
    pool = screened(pool, TASKS, args.screen2_keep)
    print(f"screen 2 keeps {len(pool)}: {pool}", flush=True)
    if args.stop_after == "screen2":
        return
    run_grid(model, tok, pool, TASKS, args.confirm_samples, args.threads)
    if args.stop_after != "confirm":
        run_grid(model, tok, FINAL_EXTRA, TASKS, args.confirm_samples, args.threads)  # their multihop rows too
        pool = finalists(args.final_keep, args.confirm_samples)
        print(f"final: {len(pool)} recipes at {args.final_samples} samples of {FINAL_TASKS}: {pool}", flush=True)
        run_grid(model, tok, pool, FINAL_TASKS, args.final_samples, args.threads)
    print(report(args.confirm_samples, args.final_samples))


if __name__ == "__main__":
    main()
