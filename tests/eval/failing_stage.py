"""A user's own stages that fail, registered on import: in the test process, and in each Ray worker
when it unpickles a recipe that holds one. ``explode`` raises on every cell: those cells must be
recorded as errors while the other recipes of the same shared prefill, and the sweep, go on.
``crash:tokens=N`` ends the Ray worker's process on a context of N tokens (as a segfault or the
kernel's out-of-memory killer would) and passes every other cache through unchanged."""

from __future__ import annotations

import os

from kvstack.stack import REGISTRY, Param, Stage, register

MESSAGE = "explode: this stage fails on every cell"


class Explode(Stage):
    name = "explode"
    summary = "fails on purpose (tests a failing cell)"
    family = "misc"

    def apply_layer(self, index, layer, ctx):
        raise RuntimeError(MESSAGE)


class Crash(Stage):
    name = "crash"
    summary = "ends its Ray worker's process on one context length (tests a worker that dies)"
    family = "misc"
    params = (Param("tokens", int, 0, "the context length whose cell kills the worker"),)

    def apply(self, cache, ctx, layers):
        import ray

        # only ever inside a Ray actor: in the test process it would end pytest itself
        if cache.context_length == self.tokens and ray.is_initialized() and ray.get_runtime_context().get_actor_id():
            os._exit(1)
        return cache


for _stage in (Explode, Crash):
    if _stage.name not in REGISTRY:
        register(_stage)
