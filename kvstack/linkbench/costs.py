"""Measure, once per context, what the bandwidth-adaptive chooser needs (:class:`Costs`)."""

from __future__ import annotations

import time

import torch

from kvstack.linkbench.adapt import Costs

LEVELS = ("int8", "int4", "int2")
GROUP = 64


def best_seconds(fn, repeat: int = 2) -> float:
    """The fastest of ``repeat`` timed calls (a shared machine makes single timings noisy)."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def measure_costs(model, prompt, level_blobs: dict[str, bytes], first_token_s: float, text_s: float,
                  text_bytes: int, progress: bool) -> Costs:
    """Everything :func:`kvstack.linkbench.adapt.choose` needs, measured on one context."""
    from kvstack import wire
    from kvstack.diagnose.sensitivity import Probe, measure
    from kvstack.wire.stats import bytes_by_layer

    per_level = {lv: bytes_by_layer(blob) for lv, blob in level_blobs.items()}
    layers = len(next(iter(per_level.values()))[0])
    cont = prompt.question_ids if prompt.answer_ids is None else torch.cat([prompt.question_ids, prompt.answer_ids])
    sens = measure(Probe(model, prompt.context_ids, cont), LEVELS, GROUP, progress=progress)
    return Costs(
        levels=LEVELS,
        bytes=[{lv: per_level[lv][0][i] for lv in LEVELS} for i in range(layers)],
        damage=sens.kl,
        decode_s={lv: best_seconds(lambda b=blob: wire.decode(b)) for lv, blob in level_blobs.items()},
        shared_bytes=max(shared for _, shared in per_level.values()),
        tokens=int(prompt.context_ids.numel()),
        first_token_s=first_token_s,
        text_s=text_s,
        text_bytes=text_bytes,
    )
