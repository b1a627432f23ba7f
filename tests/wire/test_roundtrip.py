"""Exact round trips: every Encoded type, every codec, real caches from tiny models, and
``generate`` from a loaded cache gives the very tokens of the cache that was saved."""

from __future__ import annotations

import pytest
import torch
from wire_helpers import RECIPES

import kvstack
from kvstack import wire
from kvstack.kv import DenseRows
from kvstack.rows.quant import QuantRows
from kvstack.rows.rotate import HadamardRows
from kvstack.rows.split import SplitRows

CODECS = ("raw", "zstd", "colzstd", "ans", "range")


def _encodings(cache) -> set[type]:
    out = set()
    for layer in cache.layers:
        for enc in (layer.keys, layer.values):
            out.add(type(enc))
            if isinstance(enc, SplitRows):
                out.update({type(enc.quant), type(enc.dense)})
            if isinstance(enc, HadamardRows):
                out.add(type(enc.inner))
    return out


def test_recipes_cover_every_encoding_and_layout(wire_caches):
    built = wire_caches
    seen = set().union(*(_encodings(c) for c in built.values()))
    assert {DenseRows, QuantRows, SplitRows, HadamardRows} <= seen
    layers = [layer for c in built.values() for layer in c.layers]
    assert any(layer.positions is None for layer in layers)
    assert any(layer.positions is not None and layer.positions.numel() == layer.lengths[0] for layer in layers)
    assert any(not layer.uniform for layer in layers)  # per-head ragged (adakv): per-row positions
    assert any("decode_budget" in layer.meta for layer in layers)
    axes = {enc.axis for c in built.values() for layer in c.layers for enc in (layer.keys, layer.values)
            if isinstance(enc, QuantRows)}
    assert axes == {"token", "channel"}


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("recipe", RECIPES)
def test_round_trip_is_bit_exact(wire_caches, recipe, codec):
    cache = wire_caches[recipe]
    data = wire.encode(cache, codes=codec, chunk_rows=17)  # odd chunking: blocks end mid-head
    back = wire.decode(data)
    assert wire.cache_differences(cache, back) == []
    assert back.nbytes == cache.nbytes and back.ratio == cache.ratio
    if "decode_budget" in cache.layers[0].meta:
        assert isinstance(back.layers[0].meta["decode_budget"], tuple)


@pytest.mark.parametrize("delta", ("none", "seq", "anchor"))
def test_delta_modes_round_trip(wire_caches, delta):
    cache = wire_caches["int4"]
    back = wire.decode(wire.encode(cache, codes="ans", delta=delta, chunk_rows=23))
    assert wire.cache_differences(cache, back) == []


def test_comparison_sees_a_single_flipped_code(wire_caches):
    cache = wire_caches["int4"]
    back = wire.decode(wire.encode(cache))
    back.layers[1].keys.inner.codes[3, 2] ^= 1  # the default int4 is rotated: codes sit inside
    assert wire.cache_differences(cache, back) == ["layers[1].keys.inner.codes: tensors differ"]


@pytest.mark.parametrize("recipe", ("int4", "int2:g8,rot,clip=0.7",
                                    "kivi:2,g8,residual=6", "streaming:sink=2,window=12,decode=true > int4",
                                    "snapkv:0.5,window=8,alloc=adakv > int3:axis=channel,g4"))
def test_generate_from_loaded_cache_matches(wire_model, wire_caches, recipe, tmp_path):
    model, cache = wire_model, wire_caches[recipe]
    path = tmp_path / "c.kvw"
    size = wire.save(cache, path)
    assert size == path.stat().st_size
    loaded = wire.load(path, model)
    question = torch.tensor([7, 9, 11, 13])
    want = kvstack.generate(model, cache, question, max_new_tokens=12)
    got = kvstack.generate(model, loaded, question, max_new_tokens=12)
    assert torch.equal(want, got)


@pytest.mark.parametrize("arch", ("gemma2", "mistral_swa"))
def test_sliding_window_models_round_trip(arch, tiny_model, make_ids, tmp_path):
    model = tiny_model(arch)
    cache = kvstack.compress(model, make_ids(30, seed=2), "int4:g8")
    assert any(layer.sliding_window for layer in cache.layers)
    wire.save(cache, tmp_path / "s.kvw")
    loaded = wire.load(tmp_path / "s.kvw", model)
    assert wire.cache_differences(cache, loaded) == []
    q = make_ids(3, seed=9)
    assert torch.equal(kvstack.generate(model, cache, q, 6), kvstack.generate(model, loaded, q, 6))


def test_bfloat16_and_float16_rows_round_trip(tiny_model, make_ids):
    model = tiny_model("qwen2").to(torch.bfloat16)
    cache = kvstack.compress(model, make_ids(20), "kivi:4,g8,residual=4")
    assert cache.layers[0].keys.dense.dtype == torch.bfloat16
    assert wire.cache_differences(cache, wire.decode(wire.encode(cache))) == []
    half = kvstack.compress(tiny_model("llama").half(), make_ids(20), "identity")
    assert wire.cache_differences(half, wire.decode(wire.encode(half, tensors="raw"))) == []


def test_a_tensor_shared_by_layers_is_stored_once_and_shared_again(wire_caches):
    from dataclasses import replace

    cache = wire_caches["identity"]
    shared = cache.layers[0].values  # the same DenseRows object in both layers, as a cross-layer stage may do
    two = replace(cache, layers=[cache.layers[0], replace(cache.layers[1], values=shared)])
    blob = wire.encode(two, tensors="raw")
    separate = wire.encode(replace(two, layers=[two.layers[0], replace(two.layers[1],
                                                                       values=DenseRows(shared.data.clone()))]),
                           tensors="raw")
    assert len(separate) - len(blob) >= shared.nbytes  # the second copy is not on the wire
    back = wire.decode(blob)
    assert wire.cache_differences(two, back) == []
    assert back.layers[1].values.data is back.layers[0].values.data
