"""Named preset recipes, the winners of the stacking study: ``best:Nx`` and ``qa:Nx`` (N = 4, 8, 16, 32).

A preset is a whole recipe under a name, so ``kvstack run --recipe best:16x`` works without
knowing the stages. Each is the recipe ``benchmarks/stacking.py`` found most accurate at that
ratio (bytes the cache really holds vs an fp16 dense cache of the same context) **on the model
it was measured on** (``MEASURED_ON``): ranks and bit widths were tuned there, so on another
model the ratio holds (it depends only on the cache's geometry) but the accuracy does not -
run the study on your model before relying on a preset.

Two families, because they answer different questions: ``best:`` presets are question-agnostic
(the cache is built once and serves any later question); ``qa:`` presets score tokens by the
question (Q2C), so they need ``question_ids`` when the cache is built - one cache per question,
as in QA or an agent that knows its query - and keep far more accuracy per byte for it.
The numbers are in ``benchmarks/reports/stacking_run4/frontier.md`` and ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvstack.errors import RecipeError

PREFIXES = ("best:", "qa:")  # question-agnostic, question-aware
MEASURED_ON = "kvstack-retrieval run 4 (18.9M Llama, 8 layers, 2 KV heads of dim 64), 4k-token contexts, 2026-11-24"


@dataclass(frozen=True)
class Preset:
    """``recipe`` reached ``ratio`` (vs fp16 dense) and ``accuracy`` (relative to the full cache) when measured."""

    name: str
    recipe: str
    ratio: float
    accuracy: str


# Measured by `benchmarks/stacking.py` (report: benchmarks/reports/stacking_run4/frontier.md): best mean accuracy
# relative to the full cache in the band [N, 2N) x smaller than fp16, among finalists run on 24 samples of each
# needle task (8 of multihop, which the full cache never answers: 0/8, gold-answer NLL 6.4 nats/token). The full
# cache answers 24/24 single needles and 7/24 multi-key; "same" counts samples judged right/wrong exactly as the
# full cache judged them. Ratios at 4,069-4,132-token contexts; per-context bases, codebooks and dense recent rows
# make up part of the bytes, so shorter contexts compress less and longer ones more.
_FULL = "(full cache 24/24, 7/24)"
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("best:4x", "xkv:group=2,rank=96,bits=8", 4.03,
               f"niah_single 24/24, niah_multikey 8/24, same 19/24 {_FULL}; multihop ΔNLL -0.03"),
        Preset("best:8x", "latent:rank=96,bits=3,qgroup=256", 8.19,
               f"niah_single 24/24, niah_multikey 7/24, same 16/24 {_FULL}; multihop ΔNLL +0.35"),
        Preset("best:16x", "keydiff:0.125,span=16 > kivi:4,residual=32", 18.42,
               f"niah_single 24/24, niah_multikey 7/24, same 24/24 {_FULL}; multihop ΔNLL +2.69"),
        Preset("best:32x", "keydiff:0.125,span=16 > int3", 34.12,
               f"niah_single 24/24, niah_multikey 8/24, same 19/24 {_FULL}; multihop ΔNLL +3.06"),
        Preset("qa:4x", "q2c:0.5,span=16 > kvquant:4", 6.10,
               f"niah_single 24/24, niah_multikey 5/24, same 22/24 {_FULL}; multihop ΔNLL -0.19"),
        Preset("qa:8x", "q2c:0.25,span=16 > kivi:4,residual=32", 10.49,
               f"niah_single 24/24, niah_multikey 6/24, same 23/24 {_FULL}; multihop ΔNLL -0.35"),
        Preset("qa:16x", "q2c:0.125,span=16 > gear:4", 20.10,
               f"niah_single 24/24, niah_multikey 7/24, same 24/24 {_FULL}; multihop ΔNLL -0.55"),
        Preset("qa:32x", "q2c:0.1,span=16 > int4", 33.69,
               f"niah_single 24/24, niah_multikey 7/24, same 22/24 {_FULL}; multihop ΔNLL -0.69"),
    )
}


def expand(text: str) -> str:
    """The recipe a preset name stands for; any other recipe text is returned unchanged."""
    name = text.strip()
    if not name.startswith(PREFIXES):
        return text
    preset = PRESETS.get(name)
    if preset is None:
        raise RecipeError(
            f"unknown preset {name!r}; presets: {', '.join(PRESETS)} (see `kvstack recipes`), or write the stages"
        )
    return preset.recipe


def fp16_ratio(cache) -> float:
    """How many times smaller ``cache`` is than the same context in a dense fp16 cache (what presets promise)."""
    import torch

    elem = torch.empty((), dtype=cache.dense_dtype).element_size()
    return cache.dense_nbytes * 2 / elem / max(cache.nbytes, 1)


def describe_presets() -> list[tuple[str, str, str]]:
    """Rows of (name, recipe, what it measured) for ``kvstack recipes``."""
    return [(p.name, p.recipe, f"{p.ratio:.1f}x vs fp16, {p.accuracy}") for p in PRESETS.values()]
