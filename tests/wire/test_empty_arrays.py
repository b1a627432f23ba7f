"""Arrays of zero rows (a KIVI cache shorter than its residual window, empty meta tensors)
round-trip for every dtype and every codec: issue 19's "caches that save but do not load"."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from wire_helpers import tiny_llama

import kvstack
from kvstack import wire
from kvstack.rows.encoding import DTYPES

CODECS = [dict(codes=c, tensors=t) for c in ("raw", "zstd", "colzstd", "ans", "range") for t in ("raw", "zstd")]


@pytest.fixture(scope="module")
def short_kivi():
    """``kivi:2`` (residual 128) on 100 tokens: every quantized part has zero rows."""
    model = tiny_llama()
    ids = torch.randint(3, 128, (100,), generator=torch.Generator().manual_seed(1))
    return model, kvstack.compress(model, ids, recipe="kivi:2")


@pytest.mark.parametrize("options", CODECS, ids=lambda o: f"{o['codes']}-{o['tensors']}")
def test_kivi_shorter_than_its_window_saves_and_loads(short_kivi, options, tmp_path):
    model, cache = short_kivi
    assert cache.layers[0].keys.quant.shape[0] == 0  # the case: no quantized rows at all
    path = tmp_path / "c.kvw"
    kvstack.save(cache, path, **options)
    back = kvstack.load(path, model)
    assert wire.cache_differences(cache, back) == []
    q = torch.tensor([5, 6, 7])
    assert torch.equal(kvstack.generate(model, back, q, max_new_tokens=4),
                       kvstack.generate(model, cache, q, max_new_tokens=4))


@pytest.mark.parametrize("options", [dict(tensors="raw"), dict(tensors="zstd")], ids=["raw", "zstd"])
def test_empty_tensors_of_every_dtype_round_trip(wire_caches, options):
    cache = wire_caches["int4"]
    meta = dict(cache.layers[0].meta)
    for name, dtype in DTYPES.items():
        meta[f"empty_{name}"] = torch.empty(0, dtype=dtype)
        meta[f"empty2d_{name}"] = torch.empty(0, 3, dtype=dtype)
        meta[f"nowidth_{name}"] = torch.empty(4, 0, dtype=dtype)
    cache = replace(cache, layers=[replace(cache.layers[0], meta=meta), *cache.layers[1:]])
    back = wire.decode(wire.encode(cache, **options))
    for key, t in meta.items():
        if isinstance(t, torch.Tensor):
            got = back.layers[0].meta[key]
            assert got.dtype == t.dtype and got.shape == t.shape, key
