"""Cross-layer stages: adjacent layers share what they have in common, stored once.

``minicache:start=0.5,t=0.15,w=0.5`` (MiniCache, Liu et al. 2024): layers are paired
``(s, s+1), (s+2, s+3), ...`` from ``s = ceil(start * L)`` (the middle depth, where the
paper found adjacent layers' KV most alike). In each pair every token present in both
layers whose rows are within angular distance ``t`` (``arccos(cos) / pi``) shares one SLERP
direction (weight ``w`` toward the deeper layer), each layer keeping its own magnitude; the
other tokens are retained unmerged in both layers (see
:mod:`kvstack.stages.crosslayer.merge`). A pair whose merged encoding would not be smaller
than the two dense layers is left as it was. ``cache.stats['minicache_merged']`` records
the share of rows merged.

``xkv:group=2,rank=R`` (xKV, Chang et al. 2025): the keys of ``group`` adjacent layers are
concatenated per token, ``[T, group * H * d]``, and one SVD gives coefficients ``[T, r]``
shared by the group plus one basis block ``[H * d, r]`` per layer (values likewise,
separately). The first layer of a group counts the shared coefficients, every layer its
block. Layers must keep the same tokens in every head and as each other (put xkv before
per-layer eviction); a group only spans layers with the same layout.

Both keep their savings only when nothing evicts rows after them: a later selection
copies what it keeps, and each copy is counted.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch

from kvstack.errors import RecipeError
from kvstack.grammar.params import check_rank_fits
from kvstack.kv import KVCache, KVLayer
from kvstack.registry import Stage, StageContext, register
from kvstack.stages.common.heads import same_tokens_every_head
from kvstack.stages.common.keep import KeptRows
from kvstack.stages.crosslayer.merge import merge_pair
from kvstack.stages.lowrank.fit import (
    Basis,
    compute_dtype,
    fit_basis,
    rank_for_energy,
)
from kvstack.stages.lowrank.rows import JointRows, encode_coefficients


def pair_layers(layers: set[int], num_layers: int, start: float) -> list[tuple[int, int]]:
    """``(l, l+1)`` pairs from ``ceil(start * num_layers)`` on, both in ``layers``, not overlapping."""
    pairs, i = [], math.ceil(start * num_layers)
    while i + 1 < num_layers:
        if i in layers and i + 1 in layers:
            pairs.append((i, i + 1))
            i += 2
        else:
            i += 1
    return pairs


def common_rows(a: KVLayer, b: KVLayer, sink: int = 0) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Row indices of the (head, position) entries both layers hold, in the same order; None if unordered.

    Positions ``< sink`` are left out: attention sinks stay unmerged in both layers.
    """
    if a.num_heads != b.num_heads:
        return None
    pa, pb = a.row_positions(), b.row_positions()
    span = int(torch.cat([pa, pb, torch.zeros(1, dtype=torch.long)]).max()) + 1

    def keys(layer: KVLayer) -> torch.Tensor:
        heads = torch.repeat_interleave(torch.arange(layer.num_heads), torch.tensor(layer.lengths))
        return heads * span + layer.row_positions()

    ka, kb = keys(a), keys(b)
    if bool((ka[1:] <= ka[:-1]).any()) or bool((kb[1:] <= kb[:-1]).any()):
        return None  # rows not sorted by (head, position): pairing by order would mismatch
    in_a = torch.isin(ka, kb) & (pa >= sink)
    in_b = torch.isin(kb, ka) & (pb >= sink)
    return torch.nonzero(in_a).flatten(), torch.nonzero(in_b).flatten()


@register
class MiniCache(Stage, grammar="minicache"):
    start: float
    t: float
    w: float
    sink: int

    def apply(self, cache: KVCache, ctx: StageContext, layers: set[int]) -> KVCache:
        new = list(cache.layers)
        merged = total = 0
        for la, lb in pair_layers(layers, len(cache.layers), self.start):
            a, b = new[la], new[lb]
            total += 2 * (a.keys.shape[0] + a.values.shape[0])
            common = common_rows(a, b, self.sink)
            if common is None:
                continue
            ka, kb, nk = merge_pair(a.keys.decode(), b.keys.decode(), *common, self.t, self.w)
            va, vb, nv = merge_pair(a.values.decode(), b.values.decode(), *common, self.t, self.w)
            keys = _smaller(ka, kb, a.keys, b.keys)
            values = _smaller(va, vb, a.values, b.values)
            new[la] = replace(a, keys=keys[0], values=values[0])
            new[lb] = replace(b, keys=keys[1], values=values[1])
            merged += 2 * ((nk if keys[0] is ka else 0) + (nv if values[0] is va else 0))
        stats = {**cache.stats, "minicache_merged": merged / total if total else 0.0}
        return replace(cache, layers=new, stats=stats)


def _smaller(a_new, b_new, a_old, b_old) -> tuple[Any, Any]:
    """The merged pair, unless it holds no fewer bytes than the two layers as they were."""
    if a_new.nbytes + b_new.nbytes < a_old.nbytes + b_old.nbytes:
        return a_new, b_new
    return a_old, b_old


def layout(layer: KVLayer) -> tuple:
    """What layers must share to share coefficients: heads, head_dim and the positions held."""
    return (layer.num_heads, layer.keys.shape[1], layer.values.shape[1], tuple(layer.row_positions().tolist()))


@register
class XKV(Stage, grammar="xkv"):
    group: int
    rank: int
    energy: float
    target: str
    sink: int
    bits: int
    qgroup: int

    def groups(self, cache: KVCache, layers: set[int]) -> list[list[int]]:
        """Runs of up to ``group`` consecutive layers with one layout (the last of a run may be shorter)."""
        out: list[list[int]] = []
        for i in sorted(layers):
            layer = cache.layers[i]
            if not same_tokens_every_head(layer):
                raise RecipeError(
                    f"{self.spec()}: layer {i} keeps different tokens in different heads (per-head selection); "
                    "shared per-token coefficients need the same tokens everywhere: after per-head selection use "
                    "svd (per head), or select with streaming (the same tokens in every head)"
                )
            last = out[-1] if out else None
            if (
                last is not None
                and len(last) < self.group
                and last[-1] == i - 1
                and layout(cache.layers[last[-1]]) == layout(layer)
            ):
                last.append(i)
            else:
                out.append([i])
        return out

    def apply(self, cache: KVCache, ctx: StageContext, layers: set[int]) -> KVCache:
        new = list(cache.layers)
        for members in self.groups(cache, layers):
            group_layers = [new[i] for i in members]
            exact = group_layers[0].row_positions() < self.sink  # same positions in the whole group
            keys = self.encode([lay.keys for lay in group_layers], group_layers[0].num_heads, exact, "k")
            values = self.encode([lay.values for lay in group_layers], group_layers[0].num_heads, exact, "v")
            for j, i in enumerate(members):
                new[i] = replace(new[i], keys=keys[j], values=values[j])
        return replace(cache, layers=new)

    def encode(self, parts: list, heads: int, exact: torch.Tensor, which: str) -> list:
        """Shared coefficients + one block per layer for ``parts`` (keys or values of a group); sinks exact."""
        if which not in self.target:
            return parts
        store = parts[0].dtype
        dim = parts[0].shape[1]
        rows = [p.decode() for p in parts]
        keep = ~exact.view(heads, -1)[0]
        n = int(keep.sum())
        per_token = [r.reshape(heads, -1, dim)[:, keep].transpose(0, 1).reshape(n, heads * dim) for r in rows]
        x = torch.cat(per_token, dim=1).to(compute_dtype(store))
        basis = fit_basis(x) if n else Basis(torch.eye(x.shape[1], dtype=x.dtype), torch.zeros(x.shape[1]))
        if self.rank:
            check_rank_fits(self.name, self.rank, x.shape[1], "group x kv_heads x head_dim")
            r = self.rank
        else:
            r = rank_for_energy(basis.singular, self.energy)
        width = heads * dim
        blocks = [basis.vectors[j * width : (j + 1) * width, :r].to(store).clone() for j in range(len(parts))]
        coef = x @ torch.cat(blocks).to(x.dtype)
        shared = encode_coefficients(coef, self.bits, self.qgroup, (n,), store)
        return [
            KeptRows.wrap(rows[j], exact, JointRows(shared, j == 0, block, True, heads, store))
            for j, block in enumerate(blocks)
        ]
