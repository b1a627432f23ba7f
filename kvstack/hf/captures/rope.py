"""The ``rope`` capture: the model's rotary tables, which pre-RoPE stages (``svd:rope=pre``,
``kvquant``) use to un-rotate cached keys. Read from the model, no pass over the context."""

from __future__ import annotations

from typing import Any

from kvstack.grammar.needs import NEED_ROPE
from kvstack.hf.captures.registry import CaptureInputs, CaptureProvider


def rope_capture(inputs: CaptureInputs) -> dict[str, Any]:
    from kvstack.inspect.rope import rope_tables  # the model side of Rotary lives with the inspector

    return {NEED_ROPE: rope_tables(inputs.model)}


PROVIDER = CaptureProvider(NEED_ROPE, after=rope_capture)
