"""Bit-exact comparison of two caches: what "the round trip is exact" means, checkable anywhere
(tests, the load benchmark, a user debugging a transfer)."""

from __future__ import annotations

import dataclasses

import torch

from kvstack.kv import KVCache


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.is_floating_point:  # compare bits, so NaNs and -0.0 count too
        view = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        return torch.equal(a.contiguous().view(view), b.contiguous().view(view))
    return torch.equal(a, b)


def _diff(a, b, where: str, out: list[str]) -> None:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and _same_tensor(a, b)):
            out.append(f"{where}: tensors differ")
        return
    if type(a) is not type(b):
        out.append(f"{where}: {type(a).__name__} vs {type(b).__name__}")
        return
    if dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            _diff(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}", out)
        return
    if isinstance(a, dict):
        if set(a) != set(b):
            out.append(f"{where}: keys {sorted(a)} vs {sorted(b)}")
            return
        for k in a:
            _diff(a[k], b[k], f"{where}[{k!r}]", out)
        return
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            out.append(f"{where}: length {len(a)} vs {len(b)}")
            return
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(x, y, f"{where}[{i}]", out)
        return
    if a != b:
        out.append(f"{where}: {a!r} vs {b!r}")


def cache_differences(a: KVCache, b: KVCache, *, include_stats: bool = False) -> list[str]:
    """Every place where ``a`` and ``b`` differ (empty when bit-identical): each tensor of
    each layer's containers (codes, scales, zeros, dense rows, positions), lengths, meta,
    context ids, recipe, fingerprint, dtype and layout. ``stats`` (timings) only if asked."""
    out: list[str] = []
    for f in dataclasses.fields(KVCache):
        if f.name == "stats" and not include_stats:
            continue
        _diff(getattr(a, f.name), getattr(b, f.name), f.name, out)
    return out
