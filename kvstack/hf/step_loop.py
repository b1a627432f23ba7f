"""Greedy decoding in a plain step loop, for :func:`kvstack.generate` with ``graphs=True``.

``model.generate`` runs Python around every step (logits processors, stopping criteria,
input preparation, a host read of the finished flags) that cannot live inside a CUDA graph.
This loop does only what greedy decoding needs: the prompt block eagerly, then one token per
sequence a step through :class:`~kvstack.hf.graphs.GraphedStep` (replayed CUDA graphs on
CUDA, the same eager code elsewhere). Tokens stay on the device; whether every sequence has
finished is read back once every :data:`EOS_CHECK` steps, not at every step. The tokens equal
``model.generate``'s greedy tokens: ``min_new_tokens`` masks the end-of-sequence ids as its
logits processor does, and rows are cut after their first end-of-sequence id by the caller,
as after a batched ``generate``.
"""

from __future__ import annotations

from typing import Any

import torch

from kvstack.errors import InputError
from kvstack.hf.compat import cache_kwargs, position_kwargs
from kvstack.hf.graphs import GraphedStep

EOS_CHECK = 16  # steps between host reads of "has every sequence finished?"
LOOP_KWARGS = ("do_sample", "temperature", "top_p", "top_k", "eos_token_id", "min_new_tokens", "generation_config")


def use_graphs(graphs: bool | None, device: torch.device, kwargs: dict[str, Any]) -> bool:
    """``graphs=None`` (auto): the step loop on a CUDA model when greedy with no other ``generate`` option
    (measured 2.8-5.7x faster per step than ``model.generate`` on an 8B shape, same tokens; RESULTS.md),
    else ``model.generate``. An explicit True is checked (InputError for what the loop does not do)."""
    if graphs is None:
        return device.type == "cuda" and _unsupported(kwargs) is None
    if graphs:
        check_loop_kwargs(kwargs)
    return bool(graphs)


def _unsupported(kwargs: dict[str, Any]) -> str | None:
    """What in ``kwargs`` the greedy step loop does not do (sampling, beams, other options), or None."""
    other = sorted(k for k in kwargs if k not in LOOP_KWARGS)
    if other:
        return str(other)
    if kwargs.get("do_sample") or any(kwargs.get(k) is not None for k in ("temperature", "top_p", "top_k")):
        return "sampling arguments"
    return None


def check_loop_kwargs(kwargs: dict[str, Any]) -> None:
    """InputError for what the greedy step loop does not do (sampling, beams, other generate options)."""
    what = _unsupported(kwargs)
    if what is not None:
        raise InputError(
            f"graphs=True decodes greedily in kvstack's own step loop; it does not take "
            f"{what}: drop them, or use graphs=False (model.generate)"
        )


@torch.no_grad()
def greedy_loop(model, cache, input_ids: torch.Tensor, position_ids: torch.Tensor, max_new_tokens: int,
                eos: set[int], attention_mask: torch.Tensor | None = None, min_new_tokens: int = 0,
                graphs: bool = True) -> torch.Tensor:
    """``[B, n]`` greedy tokens (``n <= max_new_tokens``) after the prompt block ``input_ids [B, q]``.

    ``position_ids [B, q]`` are the block's true positions; later steps go on from the last.
    Stops early once every row has produced an id of ``eos`` (checked every :data:`EOS_CHECK` steps).
    """
    device = input_ids.device
    eos_ids = torch.tensor(sorted(eos), dtype=torch.long, device=device) if eos else None

    def pick(logits: torch.Tensor, produced: int) -> torch.Tensor:
        if eos_ids is not None and produced < min_new_tokens:
            logits = logits.index_fill(1, eos_ids, float("-inf"))
        return logits.argmax(-1, keepdim=True)

    out = model(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                **position_kwargs(model, position_ids), **cache_kwargs(cache), use_cache=True, logits_to_keep=1)
    token = pick(out.logits[:, -1], 0)
    tokens = [token]
    finished = torch.zeros_like(token, dtype=torch.bool) if eos_ids is not None else None
    pos = position_ids[:, -1:] + 1
    step = GraphedStep(model, cache, enabled=graphs)
    for produced in range(1, max_new_tokens):
        if finished is not None:
            finished |= torch.isin(token, eos_ids)
            if produced % EOS_CHECK == 0 and bool(finished.all()):
                break
        token = pick(step(token, pos), produced)
        tokens.append(token)
        pos = pos + 1
    return torch.cat(tokens, dim=1)
