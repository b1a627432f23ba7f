"""Token merging: evict like a base method, but fold each evicted token's value into the most
similar kept token of the same KV head instead of dropping it (in the spirit of D2O / KVMerger /
kvpress's merging presses).

``merge:0.25,base=snapkv`` keeps exactly the rows ``snapkv:0.25`` keeps; then for each evicted
row ``e`` of a head, its target is the kept row ``j`` of that head whose key is most similar
(cosine; ties to the earlier row), and every kept row's value becomes the weighted mean of its
own value and those folded into it, weights being the base score as a distribution over the
head's rows (the attention mass the base method measured). Keys are unchanged, so attention
*to* a merged row is what it was; what it returns stands for its whole cluster. A written
stage rather than a ``merge=true`` option of every method: it needs the evicted rows, which a
plain selection frees, and it works on top of any score-and-keep method the same way.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from kvstack.errors import RecipeError
from kvstack.kv import DenseRows, KVCache, KVLayer
from kvstack.registry import StageContext, register
from kvstack.stages.select.based import BasedSelect
from kvstack.stages.select.scores import LayerRows


def fold_values(
    keys: torch.Tensor, values: torch.Tensor, weights: torch.Tensor, kept: torch.Tensor
) -> torch.Tensor:
    """One head: ``values`` of the kept rows after folding in the evicted ones (rows ``~kept``).

    ``keys, values [L, D]``, ``weights [L]`` (>= 0), ``kept [L]`` bool; returns ``[n_kept, D]``
    in row order. A kept row whose cluster has zero total weight keeps its own value.
    """
    kept, weights, keys = kept.to(values.device), weights.to(values.device), keys.to(values.device)
    k_idx, e_idx = torch.nonzero(kept).flatten(), torch.nonzero(~kept).flatten()
    v = values.double()
    w = weights.double().clamp_min(0.0)
    total_v = v[k_idx] * w[k_idx, None]
    total_w = w[k_idx].clone()
    if e_idx.numel() and k_idx.numel():
        sim = F.normalize(keys[e_idx].double(), dim=-1) @ F.normalize(keys[k_idx].double(), dim=-1).T
        target = sim.argmax(dim=1)  # first maximum: ties go to the earlier kept row
        total_v.index_add_(0, target, v[e_idx] * w[e_idx, None])
        total_w.index_add_(0, target, w[e_idx])
    ok = total_w > 0
    out = v[k_idx].clone()
    out[ok] = total_v[ok] / total_w[ok, None]
    return out.to(values.dtype)


@register
class Merge(BasedSelect, grammar="merge"):
    """Token merging; parameters and checks: :mod:`kvstack.grammar.select`."""


    def score(self, index: int, rows: LayerRows, ctx: StageContext, context_length: int) -> torch.Tensor:
        p = self.base_distribution(index, rows, ctx, context_length)
        self._weights[index] = (rows, p)  # read back in apply, once the kept rows are known
        return p

    def apply(self, cache: KVCache, ctx: StageContext, layers: set[int]) -> KVCache:
        for i in layers:
            layer = cache.layers[i]
            if not isinstance(layer.values, DenseRows):
                raise RecipeError(
                    f"merge folds values in the model's dtype, but layer {i} holds {type(layer.values).__name__} "
                    "rows: put merge before quantization or low-rank stages in the recipe"
                )
        self._weights: dict[int, tuple[LayerRows, torch.Tensor]] = {}
        evicted = super().apply(cache, ctx, layers)
        try:
            return evicted.map_layers(lambda i, layer: self._fold(i, layer), set(self._weights))
        finally:
            self._weights = {}

    def _fold(self, index: int, kept_layer: KVLayer) -> KVLayer:
        rows, p = self._weights[index]
        kept_pos = kept_layer.row_positions()
        parts, off = [], 0
        for h, n in enumerate(kept_layer.lengths):
            count = rows.counts[h]
            pos = rows.pos[h, :count]
            kept = torch.isin(pos, kept_pos[off : off + n].to(pos.device))
            parts.append(fold_values(rows.keys[h, :count], rows.values[h, :count], p[h, :count], kept))
            off += n
        values = torch.cat(parts).to(kept_layer.values.dtype)
        return replace(kept_layer, values=DenseRows(values))
