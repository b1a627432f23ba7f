"""CriticalKV (Feng et al. 2025, "Identify Critical KV Cache in LLM Inference from an Output
Perturbation Perspective"): what a token changes in the layer's output is its attention
*times* its value as the output projection sees it, so attention alone misjudges tokens whose
projected value is small or large.

Two stages, as kvpress's ``CriticalKVPress``: each head first keeps its best
``int(first * budget)`` rows by the base score (forced rows, e.g. SnapKV's window, count
there); the rest of the budget goes to the highest ``(p + eps) * ||v W_o||_1``, where ``p`` is
the base score as a distribution over the head's rows and ``||v W_o||_1`` the L1 norm of the
row's value through the ``o_proj`` slice of each query head of the group, averaged over the
group. ``first`` is taken of the uniform budget, also under ``alloc=pyramid|adakv``.
"""

from __future__ import annotations

import torch

from kvstack.errors import ModelError
from kvstack.grammar.needs import NEED_OPROJ
from kvstack.registry import StageContext, register
from kvstack.stages.select.alloc import head_request
from kvstack.stages.select.based import BasedSelect
from kvstack.stages.select.scores import LayerRows, rank


def projected_value_norm(values: torch.Tensor, w_o: torch.Tensor, block: int = 1 << 24) -> torch.Tensor:
    """``||v W_o[q]||_1`` averaged over each KV head's query group: ``[Hkv, L]`` from values
    ``[Hkv, L, D]`` and ``w_o [Hq, D, hidden]`` (query head ``q`` belongs to KV head ``q // g``)."""
    hk, length, _ = values.shape
    g = w_o.shape[0] // hk
    w = w_o.float().to(values.device).reshape(hk, g, *w_o.shape[1:])
    out = torch.zeros(hk, length, device=values.device)
    step = max(1, block // max(g * w_o.shape[-1], 1))
    for a in range(0, length, step):
        proj = torch.einsum("hld,hgde->hgle", values[:, a : a + step].float(), w)
        out[:, a : a + step] = proj.abs().sum(dim=-1).mean(dim=1)
    return out


@register
class CriticalKV(BasedSelect, grammar="critical"):
    own_needs = frozenset({NEED_OPROJ})
    first: float
    eps: float

    def score(self, index: int, rows: LayerRows, ctx: StageContext, context_length: int) -> torch.Tensor:
        w_o = ctx.captures.get(NEED_OPROJ, {}).get(index)
        if w_o is None:
            raise ModelError(
                "critical needs the model's o_proj weights, which kvstack.compress captures; "
                "build the cache with kvstack.compress (or compress_many), not by hand"
            )
        p = self.base_distribution(index, rows, ctx, context_length)
        norm = projected_value_norm(rows.values, w_o).cpu()
        second = ((p + self.eps) * norm).masked_fill(~rows.valid, 0.0)
        second = second / second.amax(dim=1, keepdim=True).clamp_min(1e-30)  # in [0, 1]
        requests = [head_request(n, self.fraction) for n in rows.counts]
        forced = rows.valid & (rows.pos < self.sink)
        extra = self.must_keep(rows, requests, context_length)
        if extra is not None:
            forced |= extra & rows.valid
        out = second.clone()
        for h, request in enumerate(requests):
            cand = torch.nonzero(rows.valid[h] & ~forced[h]).flatten()
            n_first = max(int(self.first * request) - int(forced[h].sum()), 0)
            best = cand[rank(p[h, cand])[:n_first]]
            out[h, best] = 2.0 + p[h, best]  # stage 1 outranks every stage-2 score, in base order
        return out
