"""CUDA-graph capture of a decode step, one graph per shape bucket: the thin layer over ``model(...)``.

A decode step through the kernels is host-bound: per layer, transformers' Python forward,
kvstack's cache update and two kernel launches cost more than the GPU work (about 31 ms a
step on an 8B-shaped model against 23.5 ms for the full bf16 cache, H100). The fast path is
written so that a step can be captured once and replayed: no value is read back to the host,
new rows land at device-side lengths in preallocated buffers
(:class:`~kvstack.hf.decode_tail.DecodeTail`), and a launch's arguments do not change while
the tails stay in one capacity *bucket*.

:class:`GraphedStep` is all the capture logic there is:

* a step runs eagerly unless the cache says it can be captured (:meth:`GraphableCache.graph_key`:
  every layer's last step went through the kernels and every tail has room for the new
  token; the key names the bucket);
* the first step of a bucket runs eagerly (kernels compiled, buffers settled), the second is
  captured and replayed, the following ones are replayed;
* after a replay the host runs the cache's bookkeeping (:meth:`GraphableCache.advance`:
  token counts), the only Python a captured step would have run that has effects beyond the GPU;
* a bucket change (a tail grew) drops the graph: its buffers are gone.

Off CUDA (and with ``enabled=False``) every step runs eagerly, the same code. transformers'
``StaticCache`` is graphable as it is (its positions live on the device), which is how the
full cache gets the same loop in ``benchmarks/gpu_e2e.py``.
"""

from __future__ import annotations

import torch

from kvstack.errors import ModelError
from kvstack.hf.compat import cache_kwargs, position_kwargs


class GraphableCache:
    """Mixed into kvstack's transformers caches: whose layers answer ``graph_tail()`` and ``advance(tokens)``."""

    layers: list

    def graph_key(self, tokens: int) -> tuple | None:
        """The bucket of a step of ``tokens`` new tokens per sequence, or None when it must run eagerly."""
        key = []
        for layer in self.layers:
            tail = layer.graph_tail()
            if tail is None or tail.longest + tokens > tail.capacity:
                return None
            key.append((id(tail), tail.capacity, id(layer.plans.kplan)))
        return tuple(key)

    def advance(self, tokens: int) -> None:
        """Host bookkeeping of a replayed step: token counts, as the captured ``update`` calls kept them."""
        for layer in self.layers:
            layer.advance(tokens)


def _protocol(cache):
    """``(graph_key, advance)`` of ``cache``: kvstack's own, transformers' StaticCache, or never graphed."""
    if isinstance(cache, GraphableCache):
        return cache.graph_key, cache.advance
    from transformers import StaticCache

    if isinstance(cache, StaticCache):  # positions on the device: every step is the same graph
        return (lambda tokens: ("static", id(cache))), (lambda tokens: None)
    return (lambda tokens: None), (lambda tokens: None)


class GraphedStep:
    """``step(ids [B, q], positions [B, q]) -> last logits [B, vocab]`` over ``cache``, replayed where it can be.

    The returned logits of a replayed step are the graph's output buffer: read them before the next step.
    """

    def __init__(self, model, cache, enabled: bool = True) -> None:
        self.model, self.cache = model, cache
        self.graph_key, self.advance = _protocol(cache)
        self.enabled = enabled and next(model.parameters()).is_cuda
        self.ids: torch.Tensor | None = None
        self.pos: torch.Tensor | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.key: tuple | None = None  # the bucket self.graph was captured in
        self.seen: tuple | None = None  # the bucket whose first (eager) step ran last
        self.logits: torch.Tensor | None = None
        self.counts = {"eager": 0, "captured": 0, "replayed": 0}

    def _forward(self) -> torch.Tensor:
        out = self.model(input_ids=self.ids, position_ids=self.pos, **position_kwargs(self.model, self.pos),
                         **cache_kwargs(self.cache), use_cache=True, logits_to_keep=1)
        return out.logits[:, -1]

    def _drop(self) -> None:
        self.graph = self.key = self.logits = None

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if self.ids is None or self.ids.shape != ids.shape:
            self._drop()
            self.ids, self.pos = torch.empty_like(ids), torch.empty_like(positions)
        self.ids.copy_(ids)
        self.pos.copy_(positions)
        key = self.graph_key(ids.shape[1]) if self.enabled else None
        if key is not None and key == self.key:
            self.graph.replay()
            self.advance(ids.shape[1])
            self.counts["replayed"] += 1
            return self.logits
        self._drop()
        if key is None or key != self.seen:  # not capturable, or a new bucket's first step: eagerly
            self.seen = key
            self.counts["eager"] += 1
            return self._forward()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):  # runs the step's Python once (its host bookkeeping included)
                logits = self._forward()
        except Exception as exc:  # the step's host state moved without its GPU work: this generation is lost
            raise ModelError(f"capturing a decode step in a CUDA graph failed ({type(exc).__name__}: {exc}); "
                             "decode with graphs=False") from exc
        graph.replay()  # ... and its GPU work now
        self.graph, self.key, self.logits = graph, key, logits
        self.counts["captured"] += 1
        return logits
