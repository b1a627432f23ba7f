"""INT8 caches through the Hugging Face path: decoding works and byte counts are exact."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction

import pytest
import torch
from transformers import DynamicCache

import kvstack
from kvstack.hf import CompressedCache, enable
from kvstack.hf.compat import cache_kwargs
from kvstack.kv import DenseRows

T = 48
HEAD_DIM = 64  # wide enough heads that groups of 32 and 64 channels differ
KV_HEADS, LAYERS = 2, 2


def _model(tiny_model):
    return tiny_model("llama", head_dim=HEAD_DIM)


def _first_step_logits(model, cache, token: int) -> torch.Tensor:
    with enable(model):
        return model(input_ids=torch.tensor([[token]]), **cache_kwargs(cache), use_cache=True).logits[0, -1]


@pytest.mark.parametrize("group", [32, 64])
@torch.no_grad()
def test_int8_cache_decodes_close_to_full_cache(group, tiny_model, make_ids):
    model = _model(tiny_model)
    ctx = make_ids(T, seed=13)
    dc = DynamicCache(config=model.config)
    out = model(input_ids=ctx.view(1, -1), **cache_kwargs(dc), use_cache=True)
    token = int(out.logits[0, -1].argmax())
    full = model(input_ids=torch.tensor([[token]]), **cache_kwargs(dc), use_cache=True).logits[0, -1]

    kv = kvstack.compress(model, ctx, f"int8:g{group}")
    keys = kv.layers[0].keys
    assert not isinstance(keys, DenseRows) and keys.nbytes < keys.shape[0] * keys.shape[1] * 4
    got = _first_step_logits(model, CompressedCache(kv, torch.float32), token)
    err = (got - full).abs().max().item()
    assert 0 < err < 0.05 * full.abs().max().item()  # really quantized, and close (measured ~1.5%)

    # Exactly what attention over the dequantized rows gives: the HF path adds no error of its own.
    def dequantized(i, layer):
        return replace(layer, keys=DenseRows(layer.keys.decode()), values=DenseRows(layer.values.decode()))

    deq = kv.map_layers(dequantized)
    same = _first_step_logits(model, CompressedCache(deq, torch.float32), token)
    torch.testing.assert_close(got, same, atol=1e-5, rtol=0)

    new = kvstack.generate(model, kv, make_ids(3, seed=14), max_new_tokens=6)
    assert new.dtype == torch.long and 1 <= new.numel() <= 6


@pytest.mark.parametrize("group", [32, 64])
@torch.no_grad()
def test_int8_nbytes_hand_count(group, tiny_model, make_ids):
    model = _model(tiny_model)
    kv = kvstack.compress(model, make_ids(T, seed=15), f"int8:g{group}")
    codes = KV_HEADS * T * HEAD_DIM * 1 * 2  # int8 codes, K and V
    scales = KV_HEADS * T * (HEAD_DIM // group) * 2 * 2  # fp16 scales, K and V
    assert kv.nbytes == LAYERS * (codes + scales)
    assert kv.dense_nbytes == LAYERS * KV_HEADS * T * HEAD_DIM * 4 * 2  # fp32 model


@pytest.mark.parametrize("group", [32, 64])
@torch.no_grad()
def test_int8_ratio_on_fp16_model(group, tiny_model, make_ids):
    model = _model(tiny_model).half()
    kv = kvstack.compress(model, make_ids(T, seed=16), f"int8:g{group}")
    assert kv.dense_dtype == torch.float16
    # per element: 2 bytes dense vs 1 byte code + 2 bytes per group of scale -> 2g / (g + 2)
    expected = Fraction(2 * group, group + 2)
    assert Fraction(kv.dense_nbytes, kv.nbytes) == expected
    assert abs(kv.ratio - float(expected)) < 1e-12
    new = kvstack.generate(model, kv, make_ids(3, seed=17), max_new_tokens=3)
    assert 1 <= new.numel() <= 3
