"""The planner's estimate against a real cache: one check shared by the bytes and every-stage tests.

``kvstack plan`` must predict, within ``TOLERANCE``, the bytes ``kvstack.compress`` really holds,
per layer and in total; a stage whose bytes depend on the data (``RecipeEstimate.exact`` False)
must say so and stay under its bound instead.
"""

from __future__ import annotations

from kvstack.plan import parse_recipe, plan

TOLERANCE = 0.05
# the stages that need a parameter to run at all (rank or energy), with a value that fits head_dim 64
NEEDS_VALUE = {"svd": "svd:rank=8", "latent": "latent:rank=16", "xkv": "xkv:rank=16"}


def assert_plan_matches(cache, recipe: str, spec, context: int) -> None:
    """Fail when ``kvstack plan``'s estimate of ``recipe`` misses ``cache.nbytes`` (see module doc)."""
    estimate = parse_recipe(recipe)
    predicted = plan(spec, context, dtype="fp32", recipe=estimate)
    real = [layer.nbytes for layer in cache.layers]
    if not estimate.exact:  # data-dependent: the estimate is a bound, and says so
        assert any("data-dependent" in line for line in estimate.explain())
        assert cache.nbytes <= predicted.total_bytes, (recipe, real, [la.bytes for la in predicted.layers])
        return
    for got, want in zip(real, (layer.bytes for layer in predicted.layers), strict=True):
        assert abs(want - got) <= TOLERANCE * got, (recipe, real, [la.bytes for la in predicted.layers])
    assert abs(predicted.total_bytes - cache.nbytes) <= TOLERANCE * cache.nbytes
