"""A user's own stage that always fails, registered on import: in the test process, and in each Ray
worker when it unpickles a recipe that holds one. Its cells must be recorded as errors while the
other recipes of the same shared prefill, and the rest of the sweep, go on."""

from __future__ import annotations

from kvstack.stack import REGISTRY, Stage, register

MESSAGE = "explode: this stage fails on every cell"


class Explode(Stage):
    name = "explode"
    summary = "fails on purpose (tests a failing cell)"
    family = "misc"

    def apply_layer(self, index, layer, ctx):
        raise RuntimeError(MESSAGE)


if "explode" not in REGISTRY:
    register(Explode)
