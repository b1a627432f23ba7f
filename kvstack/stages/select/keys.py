"""Selection without queries: key norm, key diversity, and a seeded random baseline."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kvstack.registry import StageContext, register
from kvstack.stages.select.base import ScoredSelect
from kvstack.stages.select.scores import LayerRows


@register
class KNorm(ScoredSelect, grammar="knorm"):
    """K-norm (Devoto et al. 2024): keys with a low L2 norm draw more attention; keep the lowest.
    RoPE preserves norms, so post-RoPE keys give the same ranking."""


    def score(self, index: int, rows: LayerRows, ctx: StageContext, context_length: int) -> torch.Tensor:
        return -rows.keys.norm(dim=-1)


@register
class KeyDiff(ScoredSelect, grammar="keydiff"):
    """KeyDiff (Park et al. 2025): keep the keys least similar to the head's anchor, the mean of
    its unit-normalized keys (as kvpress does): score ``-cos(k, anchor)``."""


    def score(self, index: int, rows: LayerRows, ctx: StageContext, context_length: int) -> torch.Tensor:
        valid = rows.valid.to(rows.keys.device)
        unit = F.normalize(rows.keys, dim=-1) * valid.unsqueeze(-1)
        anchor = unit.sum(dim=1) / valid.sum(dim=1, keepdim=True).clamp_min(1)
        return -F.cosine_similarity(rows.keys, anchor.unsqueeze(1), dim=-1)


@register
class RandomSelect(ScoredSelect, grammar="random"):
    """Uniformly random rows per head: the baseline every method should beat. Reproducible: the
    draw of layer ``i`` depends only on ``seed`` and ``i``."""


    def score(self, index: int, rows: LayerRows, ctx: StageContext, context_length: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        return torch.rand(rows.valid.shape, generator=gen)
