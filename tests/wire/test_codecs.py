"""The pieces under the codecs: bit packing equals quant_pack's, delta transforms invert exactly,
and the entropy coder reaches the empirical entropy of what it codes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstack.rows.pack import pack_codes, unpack_codes
from kvstack.wire import bitpack, delta, entropy


@settings(max_examples=60, deadline=None)
@given(bits=st.sampled_from([2, 3, 4, 8]), rows=st.integers(0, 9), dim=st.integers(1, 70), seed=st.integers(0, 99))
def test_numpy_packing_is_quant_pack(bits, rows, dim, seed):
    codes = torch.randint(0, 1 << bits, (rows, dim), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    packed = pack_codes(codes, bits)
    assert np.array_equal(bitpack.pack(codes.numpy(), bits), packed.numpy())
    assert np.array_equal(bitpack.unpack(packed.numpy(), bits, dim), unpack_codes(packed, bits, dim).numpy())


@settings(max_examples=60, deadline=None)
@given(bits=st.sampled_from([2, 3, 4, 8]), rows=st.integers(0, 35), dim=st.integers(1, 9),
       mode=st.sampled_from(delta.DELTAS), seed=st.integers(0, 99))
def test_delta_transforms_invert_exactly(bits, rows, dim, mode, seed):
    x = np.random.default_rng(seed).integers(0, 1 << bits, (rows, dim)).astype(np.uint8)
    y = delta.forward(x, mode, 1 << bits)
    assert y.dtype == np.uint8 and (y < (1 << bits)).all()
    assert np.array_equal(delta.inverse(y, mode, 1 << bits), x)


def test_anchor_delta_is_cachegens_groups_of_ten():
    x = np.arange(25, dtype=np.uint8).reshape(25, 1)
    y = delta.forward(x, "anchor", 256).ravel()
    assert list(y[[0, 10, 20]]) == [0, 10, 20]  # anchors kept
    assert list(y[1:10]) == list(range(1, 10)) and list(y[11:20]) == list(range(1, 10))  # offsets from anchors


@pytest.mark.parametrize("coder", entropy.ENTROPY_CODECS)
def test_coder_reaches_the_empirical_entropy(coder):
    rng = np.random.default_rng(0)
    rows, dim, alphabet = 4000, 8, 16
    # each channel its own skewed distribution: per-channel models must beat one shared model
    probs = rng.dirichlet(np.full(alphabet, 0.3), size=dim)
    symbols = np.stack([rng.choice(alphabet, size=rows, p=probs[c]) for c in range(dim)], 1).astype(np.uint8)
    hist = entropy.channel_histogram(symbols, alphabet)
    model = entropy.fit(hist)
    assert model.width == 1
    payload = entropy.encode(symbols, model, coder)
    assert np.array_equal(entropy.decode(payload, rows, model, coder), symbols)
    # float64 reference: the empirical per-channel entropy in bits
    p = hist / hist.sum(1, keepdims=True)
    ideal = -(hist * np.log2(np.where(p > 0, p, 1))).sum()
    assert len(payload) * 8 < ideal * 1.01 + 256
    shared = -(hist.sum(0) * np.log2(np.maximum(hist.sum(0) / hist.sum(), 1e-300))).sum()
    assert len(payload) * 8 < shared  # per-channel models really pay off


def test_model_round_trips_through_json():
    hist = np.random.default_rng(1).integers(0, 500, (12, 4))
    model = entropy.fit(hist)
    back = entropy.Model.from_json(model.to_json(), 12, 4)
    assert back.width == model.width and np.array_equal(back.freq, model.freq)
