"""Gather the per-layer statistics of one full cache into a report: a table, advice, JSON.

:func:`inspect_cache` works on a :class:`~kvstack.kv.KVCache` and the prefill captures
(no model); :func:`inspect_model` runs the prefill itself. The advice lines turn the
numbers into recipe hints, with the thresholds written next to each rule.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from kvstack.errors import InputError
from kvstack.inspect import stats
from kvstack.kv import KVCache
from kvstack.stages.common.rope import Rotary

MERGE_T = 0.15  # minicache's default threshold, so "mergeable" means what the stage would merge


@dataclass
class LayerStats:
    layer: int
    tokens: int
    k_outlier: float  # max / median channel magnitude of keys
    v_outlier: float
    k_kurtosis: float
    v_kurtosis: float
    k_rank: list[float]  # mean over heads of the rank for 90/95/99% energy
    v_rank: list[float]
    kpre_rank: list[float] | None  # keys before RoPE (None: no rotary tables)
    latent_rank: list[int]  # joint [all heads' K | V] per token
    cos_next_k: float | None  # mean cosine with the next layer (None for the last layer)
    cos_next_v: float | None
    mergeable_next: float | None  # share of K and V rows within MERGE_T of the next layer
    sink_share: float | None  # mean over query heads of the attention share of the first tokens
    sink_uniform: float | None  # the same share under uniform causal attention


@dataclass
class ModelReport:
    head_dim: int
    kv_heads: int
    context_tokens: int
    sink_tokens: int
    layers: list[LayerStats]
    cos_k: torch.Tensor  # [L, L]
    cos_v: torch.Tensor
    key_channels: torch.Tensor  # [L, H*d] channel magnitudes / layer median
    value_channels: torch.Tensor
    sink_heads: torch.Tensor | None  # [L, Hq]
    model: str = ""
    energies: tuple[float, ...] = stats.ENERGIES
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        """Plain data (lists and numbers) for ``stats.json``."""
        out = {
            "model": self.model,
            "head_dim": self.head_dim,
            "kv_heads": self.kv_heads,
            "context_tokens": self.context_tokens,
            "sink_tokens": self.sink_tokens,
            "energies": list(self.energies),
            "merge_threshold": MERGE_T,
            "layers": [asdict(s) for s in self.layers],
            "cos_k": self.cos_k.tolist(),
            "cos_v": self.cos_v.tolist(),
            "advice": self.advice(),
        }
        if self.sink_heads is not None:
            out["sink_heads"] = self.sink_heads.tolist()
        return out

    def rows(self) -> list[tuple[str, ...]]:
        def f(x, spec=".2f"):
            return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)

        def ranks(r):
            return "-" if r is None else "/".join(f"{x:.0f}" for x in r)

        out = []
        for s in self.layers:
            out.append(
                (
                    str(s.layer),
                    f(s.k_outlier, ".1f"),
                    f(s.k_kurtosis, ".1f"),
                    f(s.v_outlier, ".1f"),
                    f(s.v_kurtosis, ".1f"),
                    ranks(s.k_rank),
                    ranks(s.kpre_rank),
                    ranks(s.v_rank),
                    ranks(s.latent_rank),
                    f(s.cos_next_k),
                    f(s.cos_next_v),
                    f(None if s.mergeable_next is None else 100 * s.mergeable_next, ".0f"),
                    f(None if s.sink_share is None else 100 * s.sink_share, ".0f"),
                    f(None if s.sink_uniform is None else 100 * s.sink_uniform, ".0f"),
                )
            )
        return out

    HEADER = (
        "layer", "K max/med", "K kurt", "V max/med", "V kurt", "K rank", "K pre-RoPE", "V rank",
        "KV latent", "cos K+1", "cos V+1", "merge%", "sink%", "unif%",
    )

    def advice(self) -> list[str]:
        """Recipe hints from the numbers (each with the rule that produced it)."""
        out = []
        n = len(self.layers)
        d = self.head_dim
        k_out = [s.k_outlier for s in self.layers]
        heavy = [s.layer for s in self.layers if s.k_outlier > 2 * s.v_outlier and s.k_outlier > 5]
        if heavy:
            out.append(
                f"keys have outlier channels (max/median > 5 and > 2x the values') in {len(heavy)}/{n} layers "
                f"(up to {max(k_out):.0f}x): quantize keys per channel (kivi, int4:axis=channel), values per token"
            )
        k95 = _mean([s.k_rank[1] for s in self.layers])
        v95 = _mean([s.v_rank[1] for s in self.layers])
        out.append(
            f"95% of the energy needs {k95:.0f}/{d} key and {v95:.0f}/{d} value directions per head on average: "
            f"svd:energy=0.95 keeps ~{(k95 + v95) / (2 * d):.0%} of the coefficients"
        )
        pre = [s.kpre_rank[1] for s in self.layers if s.kpre_rank is not None]
        if pre:
            p95 = _mean(pre)
            verdict = "project keys before RoPE (svd:rope=pre)" if p95 < 0.8 * k95 else "RoPE costs little rank"
            out.append(f"before RoPE, keys need {p95:.0f}/{d} directions for 95% (vs {k95:.0f} after): {verdict}")
        lat = _mean([s.latent_rank[1] for s in self.layers])
        width = 2 * self.kv_heads * d
        out.append(
            f"a joint K|V latent needs {lat:.0f}/{width} directions for 95% per layer "
            f"(latent:energy=0.95 keeps ~{lat / width:.0%} of the values per token)"
        )
        merge = [s.mergeable_next for s in self.layers if s.mergeable_next is not None]
        cos = [s.cos_next_k for s in self.layers if s.cos_next_k is not None] + [
            s.cos_next_v for s in self.layers if s.cos_next_v is not None
        ]
        if merge:
            m = _mean(merge)
            verdict = (
                "adjacent layers are not alike: minicache will merge little and lose accuracy where it does"
                if m < 0.3
                else "adjacent layers share directions: minicache can merge a large share"
            )
            out.append(
                f"mean cosine between adjacent layers {_mean(cos):.2f}; {m:.0%} of rows within angular distance "
                f"{MERGE_T} of the next layer: {verdict}"
            )
        sinks = [(s.sink_share, s.sink_uniform) for s in self.layers if s.sink_share is not None]
        if sinks:
            share = _mean([a for a, _ in sinks])
            uniform = _mean([b for _, b in sinks])
            verdict = "keep them (streaming/snapkv sink=4)" if share > 3 * uniform else "no strong attention sink"
            out.append(
                f"the first {self.sink_tokens} tokens get {share:.0%} of the attention (uniform attention: "
                f"{uniform:.1%}): {verdict}"
            )
        return out


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def inspect_cache(
    cache: KVCache,
    attention: dict[int, torch.Tensor] | None = None,
    rope: dict[int, Rotary] | None = None,
    sink_tokens: int = 4,
    model: str = "",
    progress: bool = False,
) -> ModelReport:
    """Statistics of a full (uncompressed) cache; ``attention`` is the prefill's ``attention`` capture.

    ``progress`` shows a bar over layers: on a 30-layer model the SVDs take most of a minute.
    """
    from tqdm.auto import tqdm

    if sink_tokens < 1:
        raise InputError(f"sink_tokens={sink_tokens}: count at least the first token")
    keys, values = [], []
    for i, layer in enumerate(cache.layers):
        if not layer.uniform:
            raise InputError(f"layer {i} is ragged: inspect a full cache (recipe 'identity'), not a compressed one")
        h, n = layer.num_heads, layer.max_length
        keys.append(layer.keys.decode().reshape(h, n, -1).double())
        values.append(layer.values.decode().reshape(h, n, -1).double())
    # one step per layer plus two for the cross-layer cosine matrices (seconds each on 30 layers)
    bar = tqdm(total=len(cache.layers) + 2, desc="analysing layers", unit="step", disable=not progress, leave=False)
    cos_k = stats.cosine_matrix(keys)
    bar.update()
    cos_v = stats.cosine_matrix(values)
    bar.update()
    out = []
    for i, layer in enumerate(cache.layers):
        bar.update()
        k, v = keys[i], values[i]
        h, n, _ = k.shape
        kpre = None
        if rope is not None:
            pos = layer.row_positions().view(h, n)
            kpre = stats.head_ranks(torch.stack([rope[i].unrotate(k[j], pos[j]) for j in range(h)])).mean(0).tolist()
        joint = torch.cat([k.transpose(0, 1).reshape(n, -1), v.transpose(0, 1).reshape(n, -1)], dim=1)
        last = i + 1 == len(cache.layers)
        merge = None
        if not last:
            mk = stats.mergeable_share(k, keys[i + 1], MERGE_T)
            mv = stats.mergeable_share(v, values[i + 1], MERGE_T)
            merge = (mk + mv) / 2
        share = uniform = None
        if attention is not None and i in attention:
            share = float(stats.sink_share(attention[i][:, : cache.context_length], sink_tokens).mean())
            uniform = stats.uniform_sink_share(cache.context_length, sink_tokens, layer.sliding_window)
        out.append(
            LayerStats(
                layer=i,
                tokens=n,
                k_outlier=stats.outlier_ratio(stats.channel_magnitudes(k)),
                v_outlier=stats.outlier_ratio(stats.channel_magnitudes(v)),
                k_kurtosis=stats.excess_kurtosis(k),
                v_kurtosis=stats.excess_kurtosis(v),
                k_rank=stats.head_ranks(k).mean(0).tolist(),
                v_rank=stats.head_ranks(v).mean(0).tolist(),
                kpre_rank=kpre,
                latent_rank=stats.ranks_for(joint),
                cos_next_k=None if last else float(cos_k[i, i + 1]),
                cos_next_v=None if last else float(cos_v[i, i + 1]),
                mergeable_next=merge,
                sink_share=share,
                sink_uniform=uniform,
            )
        )
    bar.close()
    sink_heads = None
    if attention is not None and all(i in attention for i in range(len(cache.layers))):
        sink_heads = torch.stack(
            [stats.sink_share(attention[i][:, : cache.context_length], sink_tokens) for i in range(len(out))]
        )
    return ModelReport(
        head_dim=keys[0].shape[-1],
        kv_heads=keys[0].shape[0],
        context_tokens=cache.context_length,
        sink_tokens=sink_tokens,
        layers=out,
        cos_k=cos_k,
        cos_v=cos_v,
        key_channels=_relative_channels(keys),
        value_channels=_relative_channels(values),
        sink_heads=sink_heads,
        model=model,
    )


def _relative_channels(layers: list[torch.Tensor]) -> torch.Tensor:
    """``[L, H*d]`` channel magnitudes divided by each layer's median (1 = a typical channel)."""
    rows = [stats.channel_magnitudes(x) for x in layers]
    return torch.stack([r / torch.quantile(r, 0.5).clamp_min(1e-300) for r in rows])


@torch.no_grad()
def inspect_model(model, context_ids: torch.Tensor, sink_tokens: int = 4, name: str = "",
                  progress: bool = False) -> ModelReport:
    """Prefill ``context_ids`` with attention capture and report on the full cache it makes."""
    from kvstack.errors import ModelError
    from kvstack.hf.model import model_info
    from kvstack.hf.prefill import prefill
    from kvstack.inspect.rope import rope_tables
    from kvstack.stack import NEED_ATTENTION

    info = model_info(model)
    ids = torch.as_tensor(context_ids).view(-1).long()
    if ids.numel() < 2:
        raise InputError("inspect needs a context of at least 2 tokens (pass a longer --context-file)")
    pre = prefill(model, info, ids, frozenset({NEED_ATTENTION}), progress=progress)
    try:
        rope = rope_tables(model)
    except ModelError:
        rope = None
    report = inspect_cache(pre.cache, pre.captures.get(NEED_ATTENTION), rope, sink_tokens, name, progress=progress)
    if rope is None:
        report.notes.append("no usable rotary tables: pre-RoPE ranks not reported")
    return report
