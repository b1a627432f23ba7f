"""Named preset recipes (``best:Nx``, ``qa:Nx``): the table lives in :mod:`kvstack.grammar.presets`.

This module keeps the old import path and adds :func:`fp16_ratio`, which measures a real cache.
"""

from __future__ import annotations

from kvstack.grammar.presets import (
    MEASURED_ON,
    PREFIXES,
    PRESETS,
    QA16_RATIO,
    Preset,
    describe_presets,
    expand,
)

__all__ = ["MEASURED_ON", "PREFIXES", "PRESETS", "QA16_RATIO", "Preset", "describe_presets", "expand", "fp16_ratio"]


def fp16_ratio(cache) -> float:
    """How many times smaller ``cache`` is than the same context in a dense fp16 cache (what presets promise)."""
    import torch

    elem = torch.empty((), dtype=cache.dense_dtype).element_size()
    return cache.dense_nbytes * 2 / elem / max(cache.nbytes, 1)
