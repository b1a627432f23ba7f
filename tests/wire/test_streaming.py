"""Streaming: any split of the bytes decodes the same, and layers come out before the stream ends."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kvstack import wire


def test_layers_are_usable_before_the_stream_ends(wire_caches):
    cache = wire_caches["kivi:2,g8,residual=6"]
    pieces = list(wire.encode_stream(cache, chunk_rows=16))
    dec = wire.StreamDecoder()
    seen_at = {}
    for i, piece in enumerate(pieces):
        for index, layer in dec.feed(piece):
            seen_at[index] = i
            assert wire.cache_differences(
                type(cache)([layer], cache.context_ids, cache.dense_dtype),
                type(cache)([cache.layers[index]], cache.context_ids, cache.dense_dtype),
            ) == []
    assert sorted(seen_at) == [0, 1]
    assert seen_at[0] < seen_at[1] < len(pieces) - 1  # layer 0 was ready while layer 1 was still coming
    assert wire.cache_differences(cache, dec.finish()) == []


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(0, 10_000), max_size=30))
def test_any_split_decodes_identically(wire_caches, cuts):
    cache = wire_caches["snapkv:0.5,window=8,alloc=adakv > int3:axis=channel,g4"]
    blob = wire.encode(cache)
    points = sorted({c % (len(blob) + 1) for c in cuts} | {0, len(blob)})
    pieces = [blob[a:b] for a, b in zip(points, points[1:])]
    assert wire.cache_differences(cache, wire.decode_stream(pieces)) == []


def test_iter_layers_yields_in_order_and_checks_the_end(wire_caches):
    cache = wire_caches["int4"]
    got = list(wire.iter_layers(wire.encode_stream(cache)))
    assert [i for i, _ in got] == list(range(len(cache.layers)))


def test_verify_only_checks_without_keeping_tensors(wire_caches):
    blob = wire.encode(wire_caches["int4"])
    dec = wire.StreamDecoder(verify_only=True)
    assert dec.feed(blob) == []
    header = dec.check_complete()
    assert header.context_tokens == wire_caches["int4"].context_length
    assert header.context_sha256 == wire.prefix_hash(wire_caches["int4"].context_ids)


def test_byte_breakdown_accounts_for_every_byte(wire_caches):
    cache = wire_caches["kivi:2,g8,residual=6"]
    blob = wire.encode(cache, codes="raw", tensors="raw")
    parts = wire.byte_breakdown(blob)
    assert sum(parts.values()) == len(blob)
    # raw coding stores exactly the bytes the cache holds in memory
    assert parts["codes"] + parts["scales"] + parts["zeros"] + parts["data"] == cache.nbytes
    assert parts["context_ids"] == 4 * cache.context_length


def test_bytes_by_layer_prices_each_layer(wire_caches):
    from kvstack.stack import Recipe, StageContext
    from kvstack.wire.format import FRAME
    from kvstack.wire.stats import bytes_by_layer

    cache = wire_caches["identity"]
    mixed = Recipe.parse("int2:g8 > int8:g8@layer1").apply(cache, StageContext(4, 2, 16, 2))
    blob = wire.encode(mixed, codes="raw", tensors="raw")
    per_layer, shared = bytes_by_layer(blob)
    assert sum(per_layer) + shared == len(blob)
    # raw: a layer's frames hold exactly its tensors (codes, scales, zeros) plus one frame header per chunk
    for layer, got in zip(mixed.layers, per_layer):
        tensors = [t for e in (layer.keys, layer.values) for t in (e.codes, e.scales, e.zeros) if t is not None]
        frames = sum(-(-t.shape[0] // 1024) for t in tensors)
        assert got == layer.nbytes + frames * FRAME.size
    assert per_layer[1] > per_layer[0]  # int8 against int2
