"""Helpers of the LMCache tests: real SmolLM2 KV as LMCache chunks, and one store/reload cycle
through LMCache's own StorageManager (lmcache/v1/distributed) with kvstack's serializer."""

from __future__ import annotations

import dataclasses
import json
import time

import torch

import kvstack
from kvstack.eval.texts import essay
from kvstack.integrations.lmcache.chunks import to_chunks

CHUNK = 256  # LMCache's default chunk size; a multiple of int4's 64-token channel groups
QUESTION = "\n\nQuestion: What is this essay about?\nAnswer:"
PLUGIN = {"type": "plugin", "module_path": "kvstack.integrations.lmcache.adapter", "class_name": "KvstackL2Adapter"}


@dataclasses.dataclass
class RealKV:
    """A SmolLM2 context, its full cache and that cache's KV as LMCache chunks."""

    ids: torch.Tensor
    question: torch.Tensor
    full: kvstack.KVCache
    chunks: list[torch.Tensor]  # [2, layers, CHUNK, heads * head_dim], fp32

    @property
    def head_dim(self) -> int:
        return int(self.full.layers[0].keys.shape[1])


def real_kv(model, tok, n_chunks: int = 2) -> RealKV:
    ids = tok(essay("founders"), return_tensors="pt").input_ids[0][: n_chunks * CHUNK]
    question = tok(QUESTION, add_special_tokens=False, return_tensors="pt").input_ids[0]
    full = kvstack.compress(model, ids, recipe="identity")
    return RealKV(ids, question, full, to_chunks(full, CHUNK))


def storage_manager(adapter: dict):
    """LMCache's StorageManager with one L2 adapter, configured the way ``lmcache server`` parses its flags."""
    from lmcache.v1.distributed.config import parse_args
    from lmcache.v1.distributed.storage_manager import StorageManager

    import kvstack.integrations.lmcache as integration

    integration.register()
    config = parse_args(["--l1-size-gb", "0.2", "--eviction-policy", "LRU", "--l2-adapter", json.dumps(adapter)])
    return StorageManager(config)


def keys_for(ids: torch.Tensor, n: int, model_name: str = "smollm2-135m"):
    """LMCache object keys of the first ``n`` chunks: a hash of each chunk's token prefix."""
    import hashlib

    from lmcache.v1.distributed.api import ObjectKey

    return [ObjectKey(chunk_hash=hashlib.sha256(ids[: (i + 1) * CHUNK].numpy().tobytes()).digest()[:16],
                      model_name=model_name, kv_rank=0) for i in range(n)]


def layout_of(chunk: torch.Tensor):
    from lmcache.v1.distributed.api import MemoryLayoutDesc

    return MemoryLayoutDesc(shapes=[chunk.shape], dtypes=[chunk.dtype])


def store(sm, keys, chunks, timeout: float = 60) -> int:
    """Write chunks into L1, wait until the L2 adapter reports them stored; returns L2's bytes."""
    objs = sm.reserve_write(keys, layout_of(chunks[0]))
    assert set(objs) == set(keys), "L1 refused a reservation"
    for key, chunk in zip(keys, chunks, strict=True):
        objs[key].tensor.copy_(chunk)
    sm.finish_write(keys)
    deadline = time.time() + timeout
    while time.time() < deadline:
        used = sum(u for u, _ in sm.get_l2_usages())
        status = sm.report_status()["store_controllers"]["_default"]
        if used > 0 and status["pending_keys_count"] == 0 and status["in_flight_task_count"] == 0:
            return used
        time.sleep(0.05)
    raise AssertionError(f"L2 store did not finish in {timeout} s: {sm.report_status()}")


def drop_and_reload(sm, keys, like: torch.Tensor, timeout: float = 60):
    """Delete the keys from L1, prefetch them back from L2; returns (prefetch result, reloaded chunks)."""
    from lmcache.v1.distributed.api import GroupedObjectKeys, PrefetchTaskSpec

    deleted, skipped = sm.delete_l1_keys(keys)
    assert (deleted, skipped) == (len(keys), 0)
    spec = PrefetchTaskSpec(key_groups=[GroupedObjectKeys(keys=keys, object_group_id=0, layout_desc=layout_of(like))])
    handle = sm.submit_prefetch_task(spec)
    assert sm.wait_prefetch_status(handle, timeout), "prefetch did not finish"
    result = sm.query_prefetch_status(handle)
    with sm.read_prefetched_results(keys) as objs:
        assert objs is not None, "a prefetched chunk is missing from L1"
        chunks = [o.tensor.clone() for o in objs]
    sm.finish_read_prefetched(keys)
    return result, chunks
