"""A quantizer after a low-rank stage quantizes the coefficients (r per row), not the reconstruction
(head_dim per row): bytes counted by hand, values checked against the exact coefficients."""

from __future__ import annotations

import torch

from kvstack.kv import KVCache, KVLayer
from kvstack.rows.quant import QuantRows
from kvstack.stack import Recipe, StageContext
from kvstack.stages.common.keep import KeptRows
from kvstack.stages.lowrank.rows import LowRankRows

H, T, D, R, SINK = 2, 40, 32, 16, 4
CTX = StageContext(num_query_heads=4, num_kv_heads=H, head_dim=D, num_layers=1)


def cache() -> KVCache:
    g = torch.Generator().manual_seed(0)
    k, v = torch.randn(H, T, D, generator=g), torch.randn(H, T, D, generator=g)
    return KVCache([KVLayer.from_dense(k, v)], torch.zeros(T, dtype=torch.int32), torch.float32)


def test_svd_then_int4_stores_4_bit_coefficients_hand_count():
    out = Recipe.parse(f"svd:rank={R} > int4:token").apply(cache(), CTX).layers[0]
    for enc in (out.keys, out.values):
        assert isinstance(enc, KeptRows) and isinstance(enc.inner, LowRankRows)
        coef = enc.inner.coefficients
        assert isinstance(coef, QuantRows) and coef.bits == 4 and coef.shape == (H * (T - SINK), R)
    rows = H * (T - SINK)
    codes = rows * R // 2  # two 4-bit codes per byte
    params = rows * 1 * (2 + 2)  # g64 capped at r=16: one fp16 scale + one fp16 zero per row
    basis = H * D * R * 4  # fitted on this context: counted, fp32
    sink = H * SINK * D * 4  # first 4 tokens kept exact, fp32
    assert out.keys.nbytes == out.values.nbytes == codes + params + basis + sink
    # quantizing the reconstruction instead would hold D codes per row
    assert out.keys.inner.coefficients.codes.shape == (rows, R // 2)


def test_reconstruction_is_the_basis_times_the_dequantized_coefficients():
    c = cache()
    low = Recipe.parse(f"svd:rank={R}").apply(c, CTX).layers[0].keys
    q = Recipe.parse(f"svd:rank={R} > int4:token").apply(c, CTX).layers[0].keys
    dq = q.inner.coefficients.dequantize().double()
    exact = low.inner.coefficients.decode().double()
    step = q.inner.coefficients.scales.double()  # one scale per row (group = r)
    assert bool(((dq - exact).abs() <= step / 2 + 1e-6).all())  # each coefficient within half a step
    basis = low.inner.basis.double()
    n = T - SINK
    want = torch.cat([dq[h * n : (h + 1) * n] @ basis[h].mT for h in range(H)])
    got = q.decode().double().view(H, T, D)[:, SINK:].reshape(-1, D)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert not torch.allclose(q.decode(), low.decode(), atol=1e-4)  # really quantized
