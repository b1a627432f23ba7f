"""The ``model.generate`` arguments kvstack adds, shared by the one-sequence and the batched call.

Greedy unless the caller asks for sampling (with the model's sampling defaults silenced so
transformers does not warn), and a pad id even for models that define none, because a batch
pads and a finished row is filled with it. :func:`eos_ids` lets the batched call cut each row
where the one-sequence call would have stopped.
"""

from __future__ import annotations

from typing import Any

import torch

from kvstack.errors import ModelError


def generation_kwargs(model, generate_kwargs: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """``(kwargs for model.generate, pad id)``: the caller's kwargs with kvstack's defaults filled in."""
    kwargs = dict(generate_kwargs)
    if kwargs.get("num_return_sequences", 1) != 1:
        raise ModelError(
            f"num_return_sequences={kwargs['num_return_sequences']}: a kvstack cache decodes one row per sequence, "
            "so num_return_sequences must be 1; call generate again (with do_sample=True) for more answers"
        )
    kwargs.setdefault("do_sample", False)
    if not kwargs["do_sample"]:
        for key in ("temperature", "top_p", "top_k"):
            kwargs.setdefault(key, None)
    pad = kwargs.pop("pad_token_id", None)
    if pad is None:
        pad = getattr(model.generation_config, "pad_token_id", None)
    if pad is None:
        pad = getattr(model.generation_config, "eos_token_id", None)
        pad = pad[0] if isinstance(pad, list) else pad
    return kwargs, int(pad) if pad is not None else 0


def eos_ids(model, kwargs: dict[str, Any]) -> set[int]:
    """The token ids that end a sequence in this call (the caller's ``eos_token_id`` first)."""
    eos = kwargs.get("eos_token_id")
    if eos is None and kwargs.get("generation_config") is not None:
        eos = kwargs["generation_config"].eos_token_id
    if eos is None:
        eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        return set()
    if isinstance(eos, torch.Tensor):
        return {int(x) for x in eos.flatten().tolist()}
    return {int(x) for x in eos} if isinstance(eos, (list, tuple, set)) else {int(eos)}


def cut_after_eos(row: torch.Tensor, eos: set[int]) -> torch.Tensor:
    """``row`` up to and including its first end-of-sequence token: what a one-sequence call returns
    (transformers fills a batch row that finished early with padding)."""
    if not eos:
        return row
    hits = torch.isin(row, torch.tensor(sorted(eos), dtype=row.dtype)).nonzero()
    return row if hits.numel() == 0 else row[: int(hits[0, 0]) + 1]
