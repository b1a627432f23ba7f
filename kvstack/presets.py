"""Named preset recipes: ``best:4x`` ... ``best:32x``, the winners of the stacking study.

A preset is a whole recipe under a name, so ``kvstack run --recipe best:16x`` works without
knowing the stages. Each is the recipe ``benchmarks/stacking.py`` found most accurate at that
ratio (bytes the cache really holds vs an fp16 dense cache of the same context) **on the model
it was measured on** (``MEASURED_ON``): ranks and bit widths were tuned there, so on another
model the ratio holds (it depends only on the cache's geometry) but the accuracy does not -
run the study on your model before relying on a preset. The numbers are in
``benchmarks/reports/stacking/frontier.md`` and ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvstack.errors import RecipeError

PREFIX = "best:"
MEASURED_ON = "kvstack-retrieval (18.9M Llama, 8 layers, 2 KV heads of dim 64), 4k-token contexts, 2026-11-23"


@dataclass(frozen=True)
class Preset:
    """``recipe`` reached ``ratio`` (vs fp16 dense) and ``accuracy`` (relative to the full cache) when measured."""

    name: str
    recipe: str
    ratio: float
    accuracy: str


# Measured by `benchmarks/stacking.py` (report: benchmarks/reports/stacking/frontier.md): best mean accuracy
# relative to the full cache in the band [N, 2N) x smaller than fp16, on 3 samples per task (95% Wilson intervals
# there are wide: a 2/3 is anywhere in 0.21-0.94). Ratios at 4,069-4,132-token contexts; per-context bases make up
# part of the bytes, so shorter contexts compress less and longer ones more.
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("best:4x", "xkv:group=2,rank=96,bits=8", 4.03,
               "niah_single 2/3, niah_multikey 1/3 (full cache 3/3, 2/3); multihop 0/3 as the full cache"),
        Preset("best:8x", "latent:rank=96,bits=3,qgroup=256", 8.19,
               "niah_single 3/3, niah_multikey 1/3 (full cache 3/3, 2/3); multihop 0/3 as the full cache"),
        Preset("best:16x", "xkv:group=4,rank=64,bits=2", 18.97,
               "niah_single 2/3, niah_multikey 1/3 (full cache 3/3, 2/3); multihop 0/3 as the full cache"),
        Preset("best:32x", "xkv:group=4,rank=32,bits=2", 36.58,
               "does NOT retrieve: 0/3 on every task (answer NLL +4.4); nothing tried keeps accuracy at 32x"),
    )
}


def expand(text: str) -> str:
    """The recipe a preset name stands for; any other recipe text is returned unchanged."""
    name = text.strip()
    if not name.startswith(PREFIX):
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
