"""kvstack's serializer inside LMCache's own storage layer (StorageManager, lmcache/v1/distributed),
on real SmolLM2 KV: chunks stored through the ``fs`` adapter, the ``resp`` adapter on a private
redis-server, and kvstack's ``plugin`` adapter over a directory and over Redis; local memory
dropped, chunks prefetched back from L2. Every chunk must hit, come back exactly as kvstack's
codec decodes it and within int4's error bound of the original, and the model must answer from
the reloaded cache exactly as it does from kvstack's own int4 cache of the same context."""

from __future__ import annotations

import pytest

pytest.importorskip("lmcache.v1.distributed", reason="LMCache is not installed: `make test-lmcache` runs these")

import torch  # noqa: E402
from lmcache_helpers import PLUGIN, drop_and_reload, keys_for, real_kv, storage_manager, store  # noqa: E402

import kvstack  # noqa: E402
from kvstack.integrations.lmcache.chunk_codec import ChunkCodec  # noqa: E402
from kvstack.integrations.lmcache.chunks import with_chunks  # noqa: E402


def row_errors(got: torch.Tensor, want: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Error norm of each (plane, layer, token, head) row of head_dim channels."""
    return (got - want).reshape(*got.shape[:3], -1, head_dim).norm(dim=-1)


def int4_row_bounds(codec: ChunkCodec, chunk: torch.Tensor) -> torch.Tensor:
    """int4's bound per row: rotated rows are quantized per channel in groups of 32 tokens, each
    element within half its group's step; the rotation is orthogonal, so a row's error norm is at
    most half the norm of its steps. Shape ``[2, layers, tokens, heads]`` like :func:`row_errors`."""
    _, layers, tokens, hidden = chunk.shape
    heads = hidden // codec.head_dim
    out = torch.empty(2, layers, tokens, heads)
    for i, pair in enumerate(codec.quantize(chunk)):
        for plane, rows in enumerate(pair):
            inner = rows.inner  # HadamardRows -> QuantRows (axis="channel", group=32)
            assert (inner.axis, inner.group, inner.bits) == ("channel", 32, 4)
            steps = inner.scales.float().reshape(heads, -(-tokens // 32), codec.head_dim)
            per_token = steps.repeat_interleave(32, dim=1)[:, :tokens]  # [heads, tokens, head_dim]
            out[plane, i] = (per_token.norm(dim=-1) / 2).transpose(0, 1)
    return out


@pytest.fixture(scope="module")
def kv(smollm2):
    torch.manual_seed(0)
    return real_kv(*smollm2)


@pytest.fixture(scope="module")
def own_answer(smollm2, kv):
    """kvstack's own int4 cache of the context, and the model's greedy answer from it."""
    model, _ = smollm2
    own = kvstack.compress(model, kv.ids, recipe="int4")
    return own, kvstack.generate(model, own, kv.question, max_new_tokens=12)


def _adapter(kind: str, tmp_path, request, head_dim: int) -> dict:
    serde = {"type": "kvstack", "recipe": "int4", "head_dim": head_dim}
    if kind == "fs":
        return {"type": "fs", "base_path": str(tmp_path / "fs"), "serde": serde}
    if kind == "plugin-dir":
        return {**PLUGIN, "adapter_params": {"store": str(tmp_path / "store")}, "serde": serde}
    url = request.getfixturevalue("redis_url")
    import redis

    redis.Redis.from_url(url).flushdb()
    if kind == "plugin-redis":
        return {**PLUGIN, "adapter_params": {"store": url}, "serde": serde}
    host, port = url.removeprefix("redis://").split("/")[0].split(":")
    return {"type": "resp", "host": host, "port": int(port), "num_workers": 2, "serde": serde}


@pytest.mark.parametrize("kind", ["fs", "resp", "plugin-dir", "plugin-redis"])
def test_chunks_reload_from_l2_and_answer_like_kvstacks_own_cache(kind, kv, own_answer, smollm2, tmp_path, request):
    model, _ = smollm2
    codec = ChunkCodec("int4", head_dim=kv.head_dim)
    frame_bytes = len(codec.encode(kv.chunks[0]))
    keys = keys_for(kv.ids, len(kv.chunks))
    sm = storage_manager(_adapter(kind, tmp_path, request, kv.head_dim))
    try:
        stored = store(sm, keys, kv.chunks)
        result, back = drop_and_reload(sm, keys, kv.chunks[0])
    finally:
        sm.close()
    assert [c.popcount() for c in result.l2_hit_cells] == [len(keys)]  # every chunk came from L2
    raw = sum(c.numel() * 2 for c in kv.chunks)  # the same chunks in bf16, what an engine would hand LMCache
    if kind.startswith("plugin"):
        assert stored < len(keys) * frame_bytes  # entropy-coded below the serializer's fixed frames
    else:
        assert stored == len(keys) * frame_bytes  # exactly the frames: the estimate is tight
    assert stored < raw / 3.1  # int4: 5 bits an element (channel groups of 32 tokens), 3.2x below bf16
    own, answer = own_answer
    for chunk, reloaded in zip(kv.chunks, back, strict=True):
        expected = torch.empty_like(chunk)
        codec.decode(codec.encode(chunk), expected)
        assert torch.equal(reloaded, expected)
        assert bool((row_errors(reloaded, chunk, kv.head_dim) <= int4_row_bounds(codec, chunk) * 1.001 + 1e-5).all())
    assert torch.equal(kvstack.generate(model, with_chunks(kv.full, back), kv.question, max_new_tokens=12), answer)


def test_plugin_without_a_serializer_stores_raw_kv_losslessly(tmp_path):
    """No ``serde``: the plugin gets LMCache's raw KV chunks, zstd-codes them and gives them back bit for bit."""
    chunks = [torch.randn(2, 2, 64, 128, generator=torch.Generator().manual_seed(i)).to(torch.bfloat16)
              for i in range(2)]
    keys = keys_for(torch.arange(1024), 2, model_name="raw-test")
    sm = storage_manager({**PLUGIN, "adapter_params": {"store": str(tmp_path)}})
    try:
        stored = store(sm, keys, chunks)
        result, back = drop_and_reload(sm, keys, chunks[0])
    finally:
        sm.close()
    assert [c.popcount() for c in result.l2_hit_cells] == [2]
    assert 0 < stored < sum(c.numel() * 2 for c in chunks)  # random bf16 still loses its zero bits to zstd
    assert all(torch.equal(a, b) for a, b in zip(back, chunks, strict=True))
