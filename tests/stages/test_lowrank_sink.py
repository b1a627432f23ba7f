"""sink=N: the first tokens stay exact beside every low-rank / cross-layer encoding, are left out
of the basis fit, and are counted as the dense rows they are."""

from __future__ import annotations

import math

import pytest
import torch

from kvstack.kv import KVCache, KVLayer
from kvstack.rows.quant import QuantRows
from kvstack.stack import StageContext
from kvstack.stages.common.inner import quantize_encoded
from kvstack.stages.common.keep import KeptRows
from kvstack.stages.common.rope import NEED_ROPE, Rotary
from kvstack.stages.crosslayer.merge import unpack_bits
from kvstack.stages.crosslayer.share import XKV, MiniCache
from kvstack.stages.lowrank.rows import JointRows, LowRankRows
from kvstack.stages.lowrank.svd import Latent, Svd
from kvstack.stages.quant.uniform import Int8

H, T, D, S = 2, 30, 8, 3
CTX = StageContext(num_query_heads=4, num_kv_heads=H, head_dim=D, num_layers=2)


def layer_of(seed: int = 0, dtype=torch.float64) -> KVLayer:
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(H, T, D, generator=g, dtype=torch.float64) * torch.logspace(0, -2, D, dtype=torch.float64)
    k[:, 0] *= 30.0  # a loud first token, as attention sinks are
    return KVLayer.from_dense(k.to(dtype), torch.randn(H, T, D, generator=g, dtype=torch.float64).to(dtype))


def sink_rows(h: int = H) -> torch.Tensor:
    return torch.cat([torch.arange(S) + i * T for i in range(h)])


def rest_rows(h: int = H) -> torch.Tensor:
    return torch.cat([torch.arange(S, T) + i * T for i in range(h)])


def test_svd_keeps_sinks_exact_and_fits_the_rest():
    layer = layer_of()
    r = 3
    out = Svd(rank=r, sink=S).apply_layer(0, layer, CTX)
    keys = out.keys
    assert isinstance(keys, KeptRows) and isinstance(keys.inner, LowRankRows)
    assert keys.inner.segments == (T - S, T - S) and keys.runs == ((True, S), (False, T - S)) * H
    x, got = layer.keys.decode(), keys.decode()
    assert torch.equal(got[sink_rows()], x[sink_rows()])
    for h in range(H):
        rest = x[S + h * T : (h + 1) * T]
        s = torch.linalg.svdvals(rest)  # the basis is fitted without the sink rows
        err = float(((got[S + h * T : (h + 1) * T] - rest) ** 2).sum())
        assert err == pytest.approx(float((s[r:] ** 2).sum()), rel=1e-9)
    assert keys.nbytes == H * (T - S) * r * 8 + H * D * r * 8 + H * S * D * 8


def test_sink_rows_change_the_error_where_they_dominate():
    layer = layer_of(1)
    with_sink = Svd(rank=2, sink=1).apply_layer(0, layer, CTX).keys.decode()
    without = Svd(rank=2, sink=0).apply_layer(0, layer, CTX).keys.decode()
    x = layer.keys.decode()
    assert torch.equal(with_sink[[0, T]], x[[0, T]])
    assert float((without[[0, T]] - x[[0, T]]).norm()) > 0  # projected like any other row


def test_kept_rows_select_and_quantize_inner():
    keys = Svd(rank=4, sink=S).apply_layer(0, layer_of(2), CTX).keys
    rows = torch.tensor([0, 2, 7, T + 1, T + 20])
    sel = keys.select(rows)
    assert isinstance(sel, KeptRows) and sel.exact.shape == (3, D)
    torch.testing.assert_close(sel.decode(), keys.decode()[rows], atol=1e-13, rtol=0)
    q = quantize_encoded(keys, (T, T), Int8(group=4).quantize)
    assert isinstance(q, KeptRows) and isinstance(q.inner.coefficients, QuantRows)
    assert torch.equal(q.decode()[sink_rows()], keys.decode()[sink_rows()])  # sinks untouched by int8
    assert q.nbytes == keys.exact.nbytes + keys.inner.basis.numel() * 8 + H * (T - S) * (4 + 2)


def test_pre_rope_with_sinks_needs_no_stored_positions():
    rot = Rotary(inv_freq=1.0 / (100.0 ** (torch.arange(0, D, 2).float() / D)))
    layer = layer_of(3)
    ctx = StageContext(4, H, D, 1, captures={NEED_ROPE: {0: rot}})
    keys = Svd(rank=D, rope="pre", target="k", sink=S).apply_layer(0, layer, ctx).keys
    assert keys.inner.positions is None and keys.inner.position_offset == S
    torch.testing.assert_close(keys.decode(), layer.keys.decode(), atol=1e-5, rtol=1e-5)


def test_latent_and_xkv_keep_sinks_exact_and_count_them():
    layer = layer_of(4)
    out = Latent(rank=5, sink=S).apply_layer(0, layer, CTX)
    assert isinstance(out.keys.inner, JointRows) and out.keys.inner.tokens == T - S
    assert torch.equal(out.values.decode()[sink_rows()], layer.values.decode()[sink_rows()])
    sinks = H * S * D * 8
    assert out.keys.nbytes == (T - S) * 5 * 8 + H * D * 5 * 8 + sinks and out.values.nbytes == H * D * 5 * 8 + sinks
    cache = KVCache([layer, layer_of(5)], torch.zeros(T, dtype=torch.int32), torch.float64)
    x = XKV(group=2, rank=6, sink=S).apply(cache, CTX, {0, 1})
    second = x.layers[1].keys
    assert isinstance(second, KeptRows) and not second.inner.owns_coefficients
    assert torch.equal(second.decode()[sink_rows()], cache.layers[1].keys.decode()[sink_rows()])
    assert second.nbytes == H * D * 6 * 8 + sinks


def test_minicache_never_merges_sinks():
    layer = layer_of(6)
    twin = KVLayer.from_dense(2 * layer.keys.decode().view(H, T, D), 3 * layer.values.decode().view(H, T, D))
    cache = KVCache([layer, twin], torch.zeros(T, dtype=torch.int32), torch.float64)
    out = MiniCache(start=0.0, sink=S).apply(cache, CTX, {0, 1})
    merged = unpack_bits(out.layers[0].keys.merged_bits, H * T).view(H, T)
    assert not merged[:, :S].any() and merged[:, S:].all()  # identical directions merge, except the sinks
    m = H * (T - S)
    assert out.layers[1].keys.nbytes == m * 8 + H * S * D * 8 + math.ceil(H * T / 8)
