"""The ``o_proj`` capture: each query head's rows of the output projection, which CriticalKV
multiplies values by to rank tokens by what they add to the layer's output. Read from the
model's weights, no pass over the context."""

from __future__ import annotations

from typing import Any

import torch

from kvstack.errors import ModelError
from kvstack.grammar.needs import NEED_OPROJ
from kvstack.hf.captures.registry import CaptureInputs, CaptureProvider
from kvstack.hf.model import ModelInfo


def output_projections(model, info: ModelInfo) -> dict[int, torch.Tensor]:
    """Layer -> ``[Hq, D, hidden]``: the rows of ``o_proj.weight^T`` each query head's output meets."""
    found = {
        int(m.layer_idx): m.o_proj.weight
        for m in model.modules()
        if isinstance(getattr(m, "o_proj", None), torch.nn.Linear) and getattr(m, "layer_idx", None) is not None
    }
    missing = [i for i in range(info.num_layers) if i not in found]
    if missing:
        raise ModelError(
            f"critical needs each attention layer's o_proj (a Linear); {type(model).__name__} has none for "
            f"layers {missing[:4]}. Use another selection method (e.g. expected) for this model"
        )
    return {
        i: found[i].detach().float().t().reshape(info.num_query_heads, info.head_dim, -1).cpu()
        for i in range(info.num_layers)
    }


def oproj_capture(inputs: CaptureInputs) -> dict[str, Any]:
    return {NEED_OPROJ: output_projections(inputs.model, inputs.info)}


PROVIDER = CaptureProvider(NEED_OPROJ, after=oproj_capture)
