"""The LMCache chunk codec and its packing, without LMCache: a chunk quantized by a kvstack recipe
comes back within the quantizer's bound, from a frame of exactly the size announced for its
layout, equal to what kvstack's own cache of the same recipe holds; layouts and recipes it
cannot encode are typed errors when the codec is configured; frames read under other settings
or cut short are CacheFormatErrors; packing is lossless and smaller on real codes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kvstack
from kvstack.errors import CacheFormatError, ConfigError, RecipeError
from kvstack.integrations.lmcache.chunk_codec import ChunkCodec, Layout, layout_of
from kvstack.integrations.lmcache.chunks import to_chunks
from kvstack.integrations.lmcache.packing import pack, unpack, unpacked_size


def _chunk(layers=3, tokens=64, hidden=64, dtype=torch.float32, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, layers, tokens, hidden, generator=g)
    x[..., 5] *= 8  # an outlier channel, as real keys have
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_int8_chunk_comes_back_within_half_a_step(dtype):
    x = _chunk(dtype=dtype)
    codec = ChunkCodec("int8", head_dim=32)
    frame = codec.encode(x)
    assert len(frame) == codec.check(layout_of([x.shape], [dtype]))
    out = codec.decode(frame, torch.empty_like(x))
    # int8 (symmetric, groups of 32 channels of a token): step = absmax / 127, error <= step / 2
    # (+ the output dtype's own rounding of the value)
    step = x.float().reshape(2, 3, 64, 2, 32).abs().amax(-1, keepdim=True) / 127
    err = (out.float() - x.float()).reshape(2, 3, 64, 2, 32).abs()
    eps = torch.finfo(dtype).eps * x.float().abs().reshape(err.shape)
    assert bool((err <= step / 2 * 1.001 + eps + 1e-6).all())


def test_frame_sizes_are_exact_and_small():
    x = _chunk(layers=4, tokens=128, hidden=128, dtype=torch.bfloat16)
    # int4: 5 bits an element (4-bit codes, an fp16 scale and zero per 32 tokens)
    for recipe, most in (("int4", 0.33), ("int8", 0.56), ("int2", 0.2), ("kivi:2,residual=0", 0.2)):
        codec = ChunkCodec(recipe, head_dim=64)
        size = codec.check(Layout(4, 128, 128, torch.bfloat16))
        assert len(codec.encode(x)) == size
        assert size < most * x.numel() * 2, (recipe, size)  # vs the bf16 chunk


def test_chunks_decode_to_kvstacks_own_cache_of_the_same_recipe(tiny_model, make_ids):
    """Chunk boundaries on the recipe's groups: the codec's KV equals kvstack.compress's, bit for bit."""
    model = tiny_model("llama")
    ids = make_ids(128)
    full, own = kvstack.compress(model, ids, recipe="identity"), kvstack.compress(model, ids, recipe="int4:g32")
    codec = ChunkCodec("int4:g32", head_dim=16)
    for chunk, expected in zip(to_chunks(full, 64), to_chunks(own, 64), strict=True):
        out = codec.decode(codec.encode(chunk), torch.empty_like(chunk))
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shapes,dtypes,match", [
    ([[2, 2, 16, 64]], [torch.float8_e4m3fn], "dtype"),
    ([[2, 2, 16, 64]], ["int8"], "dtype"),
    ([[2, 16, 64]], [torch.bfloat16], "single-plane"),
    ([[2, 2, 16, 64], [2, 2, 16, 64]], [torch.bfloat16] * 2, "one KV tensor"),
    ([[3, 2, 16, 64]], [torch.bfloat16], r"\[2, layers"),
    ([[2, 2, 16, 96]], [torch.bfloat16], "multiple of head_dim"),
])
def test_layouts_kvstack_cannot_encode_are_config_errors(shapes, dtypes, match):
    codec = ChunkCodec("int4", head_dim=64)
    with pytest.raises(ConfigError, match=match):
        codec.check(layout_of(shapes, dtypes))


@pytest.mark.parametrize("recipe,head_dim,error,match", [
    ("snapkv:0.25 > int4", 64, RecipeError, "every token"),
    ("svd:rank=8", 64, RecipeError, "every token"),
    ("int4:rot", 96, RecipeError, "power-of-two"),
    ("int8:g48", 64, RecipeError, "divide"),
    ("int4", 0, ConfigError, "head_dim"),
])
def test_recipes_kvstack_cannot_run_in_lmcache_fail_at_configuration(recipe, head_dim, error, match):
    with pytest.raises(error, match=match):
        ChunkCodec(recipe, head_dim=head_dim)


def test_frames_read_under_other_settings_or_cut_short_are_refused():
    x = _chunk()
    frame = ChunkCodec("int4", head_dim=32).encode(x)
    with pytest.raises(CacheFormatError, match="another recipe"):
        ChunkCodec("int4", head_dim=16).decode(frame, torch.empty_like(x))
    with pytest.raises(CacheFormatError, match="bytes"):
        ChunkCodec("int4", head_dim=32).decode(frame[:-1], torch.empty_like(x))
    with pytest.raises(CacheFormatError, match="not a kvstack"):
        ChunkCodec("int4", head_dim=32).decode(b"X" + frame[1:], torch.empty_like(x))


def test_packing_is_lossless_and_smaller_on_codes():
    x = _chunk(layers=4, tokens=256, hidden=128)
    frame = ChunkCodec("int4", head_dim=64).encode(x)
    blob = pack(frame)
    assert len(blob) < len(frame)
    out = np.zeros(len(frame) + 7, dtype=np.uint8)
    assert unpack(blob, out) == len(frame) == unpacked_size(blob)
    assert out[: len(frame)].tobytes() == frame and not out[len(frame) :].any()
    other = np.random.default_rng(0).integers(0, 4, 5000, dtype=np.uint8)  # not a frame: zstd whole
    back = np.zeros(5000, dtype=np.uint8)
    unpack(pack(other), back)
    assert np.array_equal(back, other)


def test_packed_blobs_that_do_not_fit_or_are_corrupt_are_refused():
    frame = ChunkCodec("int8", head_dim=32).encode(_chunk())
    blob = pack(frame)
    with pytest.raises(CacheFormatError, match="load buffer"):
        unpack(blob, np.zeros(len(frame) - 1, dtype=np.uint8))
    with pytest.raises(CacheFormatError):
        unpack(blob[:-3], np.zeros(len(frame), dtype=np.uint8))
    with pytest.raises(CacheFormatError, match="not a kvstack"):
        unpack(b"ABCD" + blob[4:], np.zeros(len(frame), dtype=np.uint8))


def test_without_lmcache_the_integration_says_how_to_install():
    import importlib
    import importlib.util

    if importlib.util.find_spec("lmcache") is not None:
        pytest.skip("LMCache is installed here: the missing-dependency message cannot show")
    from kvstack.errors import MissingDependencyError

    for module in ("serde", "adapter"):
        with pytest.raises(MissingDependencyError, match=r"pip install kvstack\[lmcache\]"):
            importlib.import_module(f"kvstack.integrations.lmcache.{module}")
    from kvstack.integrations.lmcache.server import main

    with pytest.raises(MissingDependencyError, match=r"pip install kvstack\[lmcache\]"):
        main(["--help"])


def test_frames_are_keyed_by_what_the_recipe_means_not_its_text():
    """`int4` meant channel groups of 64 tokens until the fifth session and 32 since. The fingerprint hashes the
    canonical recipe (every default written out): two spellings of one recipe read each other's frames, a frame
    of another meaning is a typed error even where the text is the same, and a version-1 frame (its fingerprint
    hashed the text, so its meaning cannot be checked) is refused by version - never KV decoded with wrong scales."""
    from kvstack.integrations.lmcache.chunk_codec import HEADER, VERSION

    x = _chunk(layers=2, tokens=128, hidden=128, dtype=torch.bfloat16)
    layout = Layout(2, 128, 128, torch.bfloat16)
    today, spelt, old = (ChunkCodec(r, head_dim=64) for r in ("int4", "int4:g32,axis=channel", "int4:g64"))
    assert today.fingerprint(layout) == spelt.fingerprint(layout) != old.fingerprint(layout)
    assert torch.equal(spelt.decode(today.encode(x), torch.empty_like(x)), today.decode(today.encode(x),
                                                                                        torch.empty_like(x)))
    frame = bytearray(old.encode(x))
    with pytest.raises(CacheFormatError, match="another recipe"):
        today.decode(bytes(frame), torch.empty_like(x))
    magic, version, entries, _, payload = HEADER.unpack_from(frame, 0)
    assert version == VERSION == 2
    HEADER.pack_into(frame, 0, magic, 1, entries, today.fingerprint(layout), payload)  # as version 1 wrote it
    with pytest.raises(CacheFormatError, match="version 1, from an older kvstack"):
        today.decode(bytes(frame), torch.empty_like(x))
