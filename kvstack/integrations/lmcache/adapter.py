"""An LMCache ``plugin`` L2 adapter that entropy-codes what it stores and keeps exact sizes in a
kvstack store (a directory or Redis, :mod:`kvstack.transport`).

Why it exists: LMCache 0.5.6 stores a serializer's whole estimated buffer, so a serializer cannot
shrink a chunk below a size fixed in advance. This adapter receives those buffers (the
``kvstack`` serde's frames when ``"serde": {"type": "kvstack", ...}`` sits on it, or raw KV
without one), codes them losslessly (:mod:`.packing`) and stores exactly the coded bytes - and
reports those bytes to LMCache's usage accounting.

Configured as (``adapter_params`` checked when LMCache builds the adapter)::

    {"type": "plugin", "module_path": "kvstack.integrations.lmcache.adapter",
     "class_name": "KvstackL2Adapter",
     "adapter_params": {"store": "/var/cache/kvstack-lmcache"  (or "redis://host:6379/0"),
                        "max_capacity_gb": 0},
     "serde": {"type": "kvstack", "head_dim": 64}}

LMCache's interface is non-blocking (submit, then an eventfd says a task finished); the store
is asynchronous (asyncio), so the adapter runs one event loop in a thread of its own and turns
each finished task into a result plus an eventfd signal.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from concurrent.futures import Future

import numpy as np
import torch

from kvstack.errors import ConfigError, KvstackError
from kvstack.integrations.lmcache.deps import lmcache_module
from kvstack.integrations.lmcache.packing import pack, unpack
from kvstack.transport.keys import CacheKey
from kvstack.transport.store import Entry
from kvstack.transport.store_url import open_store

_base = lmcache_module("lmcache.v1.distributed.l2_adapters.base")
_internal = lmcache_module("lmcache.v1.distributed.internal_api")
_native = lmcache_module("lmcache.lmcache_native")
_platform = lmcache_module("lmcache.v1.platform.event_notifier")

PARAMS = ("store", "max_capacity_gb")
RECIPE_TAG = "lmcache-plugin"


def store_key(key) -> CacheKey:
    """An LMCache ObjectKey as a kvstack CacheKey: model, rank, group and salt name the fingerprint,
    the chunk hash the prefix (both hashed, so any names fit the store's strict key pattern)."""
    who = f"{key.model_name}@{key.kv_rank}@{key.object_group_id}@{key.cache_salt}".encode()
    return CacheKey(hashlib.sha256(who).hexdigest()[:16], hashlib.sha256(key.chunk_hash).hexdigest())


def _flat_bytes(obj) -> np.ndarray:
    """A MemoryObj's tensor as a flat ``uint8`` numpy view (no copy)."""
    return obj.tensor.reshape(-1).view(torch.uint8).numpy()


class KvstackL2Adapter(_base.L2AdapterInterface):
    """LMCache L2 adapter over a kvstack store; see the module docstring."""

    def __init__(self, params: dict, l1_memory_desc=None) -> None:
        if not isinstance(params, dict):
            raise ConfigError(f"kvstack adapter: adapter_params must be an object, got {type(params).__name__}")
        unknown = sorted(set(params) - set(PARAMS))
        if unknown:
            raise ConfigError(f"kvstack adapter: unknown adapter_params {unknown}; known: {', '.join(PARAMS)}")
        url = params.get("store")
        if not isinstance(url, str) or not url:
            raise ConfigError('kvstack adapter needs adapter_params "store": a directory or redis://HOST:PORT/DB')
        capacity = params.get("max_capacity_gb", 0)
        if not isinstance(capacity, int | float) or isinstance(capacity, bool) or capacity < 0:
            raise ConfigError(f"kvstack adapter: max_capacity_gb={capacity!r} must be a number >= 0")
        super().__init__(max_capacity_bytes=int(capacity * (1 << 30)))
        self.url = url
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kvstack-l2", daemon=True)
        self._thread.start()
        self._store = open_store(url)
        if hasattr(self._store, "ping"):  # Redis: fail at start-up, not at the first store
            try:
                self._run(self._store.ping()).result(timeout=10)
            except Exception:
                self._stop_loop()
                raise
        self._lock = threading.Lock()
        self._next_id = 0
        self._done_store: dict[int, object] = {}
        self._done_lookup: dict[int, object] = {}
        self._done_load: dict[int, object] = {}
        self._efd = {name: _platform.create_event_notifier() for name in ("store", "lookup", "load")}

    # --- plumbing -------------------------------------------------------------------------
    def _run(self, coro) -> Future:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _submit(self, coro, done: dict, notifier: str, failed) -> int:
        with self._lock:
            task_id = self._next_id
            self._next_id += 1

        def finish(fut: Future) -> None:
            try:
                result = fut.result()
            except Exception:  # noqa: BLE001 - a failed task is reported to LMCache as failed
                result = failed()
            with self._lock:
                done[task_id] = result
            self._efd[notifier].notify()

        self._run(coro).add_done_callback(finish)
        return task_id

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    # --- event fds ------------------------------------------------------------------------
    def get_store_event_fd(self) -> int:
        return self._efd["store"].fileno()

    def get_lookup_and_lock_event_fd(self) -> int:
        return self._efd["lookup"].fileno()

    def get_load_event_fd(self) -> int:
        return self._efd["load"].fileno()

    # --- store ----------------------------------------------------------------------------
    def submit_store_task(self, keys: list, objects: list) -> int:
        # coded here, in LMCache's store thread: the event loop's thread stays free for the store's I/O
        blobs = [pack(_flat_bytes(obj)) for obj in objects]
        return self._submit(self._store_all(keys, blobs), self._done_store, "store",
                            lambda: _internal.L2StoreResult(False, 0))

    async def _store_all(self, keys: list, blobs: list[bytes]):
        for key, blob in zip(keys, blobs, strict=True):
            upload = await self._store.begin_put()
            try:
                await upload.write(blob)
                await upload.commit(Entry(store_key(key), len(blob), 0, RECIPE_TAG, time.time()))
            except BaseException:
                await upload.abort()
                raise
        sizes = [len(b) for b in blobs]
        self._notify_keys_stored(list(keys), sizes)
        return _internal.L2StoreResult(True, sum(sizes))

    def pop_completed_store_tasks(self) -> dict:
        with self._lock:
            done, self._done_store = self._done_store, {}
        return done

    # --- lookup ---------------------------------------------------------------------------
    def submit_lookup_and_lock_task(self, keys: list, group_layout_descs: dict) -> int:
        n = len(keys)
        return self._submit(self._lookup(keys), self._done_lookup, "lookup", lambda: _native.Bitmap(n))

    async def _lookup(self, keys: list):
        bitmap = _native.Bitmap(len(keys))
        for i, key in enumerate(keys):
            found = await self._store.open(store_key(key))
            if found is not None:
                await _close(found[1])
                bitmap.set(i)
        return bitmap

    def query_lookup_and_lock_result(self, task_id: int):
        with self._lock:
            return self._done_lookup.pop(task_id, None)

    def submit_unlock(self, keys: list) -> None:
        """Nothing to do: a kvstack store never evicts on its own, so lookups take no locks."""

    # --- load -----------------------------------------------------------------------------
    def submit_load_task(self, keys: list, objects: list) -> int:
        n = len(keys)
        return self._submit(self._load(keys, objects), self._done_load, "load", lambda: _native.Bitmap(n))

    async def _load(self, keys: list, objects: list):
        bitmap = _native.Bitmap(len(keys))
        for i, (key, obj) in enumerate(zip(keys, objects, strict=True)):
            found = await self._store.open(store_key(key))
            if found is None:
                continue
            pieces = [piece async for piece in found[1]]
            try:
                unpack(b"".join(pieces), _flat_bytes(obj))
            except KvstackError:
                continue  # a blob that does not fit this buffer is a miss, reported as such
            bitmap.set(i)
        if keys:
            self._notify_keys_accessed(list(keys))
        return bitmap

    def query_load_result(self, task_id: int):
        with self._lock:
            return self._done_load.pop(task_id, None)

    # --- lifecycle ------------------------------------------------------------------------
    def report_status(self) -> dict:
        usage = self.get_usage()
        return {"is_healthy": self._thread.is_alive(), "store": self.url, "bytes_used": usage.total_bytes_used}

    def close(self) -> None:
        try:
            self._run(self._store.close()).result(timeout=10)
        finally:
            self._stop_loop()
            for notifier in self._efd.values():
                notifier.close()


async def _close(pieces) -> None:
    close = getattr(pieces, "aclose", None)
    if close is not None:
        await close()
