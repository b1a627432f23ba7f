"""Shared by the kvquant / gear / cq tests: a small layer with outlier channels, its cache, a
rotary table, and a codebook calibration file fitted on two such caches."""

from __future__ import annotations

import torch

from kvstack.kv import KVCache, KVLayer
from kvstack.stack import StageContext
from kvstack.stages.common.rope import NEED_ROPE, Rotary
from kvstack.stages.lowrank.calibration import save_basis
from kvstack.stages.quant.calibration import CodebookSamples, describe

H, T, D = 2, 50, 16
ROT = Rotary(inv_freq=1.0 / (100.0 ** (torch.arange(0, D, 2).float() / D)))
CTX = StageContext(num_query_heads=4, num_kv_heads=H, head_dim=D, num_layers=1, captures={NEED_ROPE: {0: ROT}})


def layer_of(seed: int = 0, offset: float = 0.0) -> KVLayer:
    g = torch.Generator().manual_seed(seed)
    pre = torch.randn(H, T, D, generator=g) * torch.logspace(0, 1.3, D)  # outlier channels before RoPE
    pre[..., :4] += offset  # channels with a large constant part: narrow before RoPE, spread by the rotation
    keys = torch.stack([ROT.rotate(pre[h], torch.arange(T)) for h in range(H)])
    return KVLayer.from_dense(keys, torch.randn(H, T, D, generator=g))


def cache_of(layer: KVLayer, fingerprint: str = "") -> KVCache:
    return KVCache([layer], torch.zeros(T, dtype=torch.int32), torch.float32, model_fingerprint=fingerprint)


def calibration_file(tmp_path, fingerprint: str = "fp-model") -> str:
    """Codebooks fitted on two caches of ``layer_of`` (seeds 10, 11), saved as ``tmp_path/books``."""
    samples = CodebookSamples(per_head=1000)
    for seed in range(2):
        samples.add(cache_of(layer_of(10 + seed)), {0: ROT})
    info = type("Info", (), dict(fingerprint=fingerprint, model_type="llama", num_layers=1, num_kv_heads=H,
                                 head_dim=D))
    save_basis(tmp_path / "books", samples.tensors(), describe(info, samples, "test", True))
    return str(tmp_path / "books")
