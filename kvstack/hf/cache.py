"""A transformers ``Cache`` that attends straight over a compressed :class:`KVCache`.

Each layer keeps the compressed rows (read-only, shared with the :class:`KVCache`, so
one compressed context serves many generations) plus a dense *tail* of the tokens
generated since. ``get_seq_length`` reports every token ever seen, not the rows kept,
so transformers gives new tokens the RoPE positions they would have had with the full
cache; the attention hook masks by each row's true position.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from kvstack.decode_policy import DecodePolicy, decode_policies
from kvstack.errors import ModelError
from kvstack.hf.attention import RowMeta
from kvstack.hf.compat import LayerProtocol, mask_query_length
from kvstack.hf.decode_tail import DecodeTail
from kvstack.hf.decoded_rows import padded_rows
from kvstack.hf.fast_decode import FastStep, PlanHolder, fast_ready
from kvstack.hf.graphs import GraphableCache
from kvstack.kv import KVCache, KVLayer, tensor_nbytes


def layer_policies(base: KVLayer) -> list[DecodePolicy]:
    """The decode policies a compressed layer's stages recorded in its meta (:mod:`kvstack.decode_policy`)."""
    if not base.meta:
        return []
    from kvstack.stages import load_builtin  # the stage registry: stage modules register their policies

    load_builtin()  # a cache loaded from disk may reach here before any recipe was parsed
    return decode_policies(base.meta)


def _select_requantizes(layer: KVLayer) -> bool:
    return any(getattr(enc, "select_requantizes", False) for enc in (layer.keys, layer.values))


def fast_marker(key_states: torch.Tensor, step: FastStep) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``update`` returns on the fast path: an empty key tensor carrying the step for the attention hook."""
    marker = key_states.new_empty((key_states.shape[0], key_states.shape[1], 0, key_states.shape[-1]))
    marker._kvstack_fast = step
    return marker, marker


class KvstackLayerOps(LayerProtocol):
    """What every kvstack cache layer answers transformers alike: ``seen`` tokens so far, the
    sliding ``window``, and a refusal of the operations a read-only compressed cache cannot do."""

    seen: int
    window: int | None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device

    def get_seq_length(self) -> int:
        return self.seen

    def max_length(self) -> int:
        return self.window if self.window is not None else -1

    def reset(self) -> None:
        raise ModelError("a compressed cache cannot be reset in place; build a new one from the KVCache")

    def reorder_cache(self, beam_idx) -> None:
        raise ModelError("beam search is not supported with a kvstack cache; use greedy or sampling")

    def crop(self, max_length: int) -> None:
        raise ModelError("cropping (assisted decoding) is not supported with a kvstack cache")

    def batch_repeat_interleave(self, repeats: int) -> None:
        if repeats != 1:
            raise ModelError("a kvstack cache holds one row per sequence; num_return_sequences must be 1")

    def batch_select_indices(self, indices) -> None:
        raise ModelError("a kvstack cache keeps all its sequences; batch selection is not supported")


class CompressedLayer(KvstackLayerOps, CacheLayerMixin):
    """One layer: compressed segments + dense tail of new tokens, masked by true positions.

    ``segments[0]`` is the compressed context. What a stage goes on doing while tokens are
    generated is its decode policy (:mod:`kvstack.decode_policy`), read from the context's meta
    once and called after every step: a budget drops rows (streaming), a quantizer adds later
    segments, blocks of generated tokens quantized as the dense tail fills (KIVI).
    """

    def __init__(self, base: KVLayer, seen: int, dtype: torch.dtype, fast: bool = True) -> None:
        super().__init__()
        self.fast = fast  # may offer the GPU kernels a step (False inside a batch: they read one sequence)
        self.segments: list[KVLayer] = [base]
        self.policies = layer_policies(base)
        self.seen = seen  # tokens ever processed (context + generated)
        self.window = base.sliding_window
        self.is_sliding = self.window is not None
        self.dtype = dtype
        self._tail_k: torch.Tensor | None = None  # [H, t, D] (generic path; the fast path keeps a DecodeTail)
        self._tail_v: torch.Tensor | None = None
        self._tail_pos = torch.empty(0, dtype=torch.long)
        self.decode_tail: DecodeTail | None = None  # set on the fast path (shared by a batch: row tail_index)
        self.tail_index = 0
        self.tail_start = seen  # position of the first generated token
        self.plans = PlanHolder()
        self.last_fast = False
        self.is_initialized = True

    # --- the tail of new tokens: a DecodeTail on the fast path, grown tensors otherwise ------
    @property
    def tail_k(self) -> torch.Tensor | None:
        return self._tail_k if self.decode_tail is None else self.decode_tail.rows(self.tail_index)[0]

    @tail_k.setter
    def tail_k(self, value) -> None:
        self._tail_k = value

    @property
    def tail_v(self) -> torch.Tensor | None:
        return self._tail_v if self.decode_tail is None else self.decode_tail.rows(self.tail_index)[1]

    @tail_v.setter
    def tail_v(self, value) -> None:
        self._tail_v = value

    @property
    def tail_pos(self) -> torch.Tensor:
        if self.decode_tail is None:
            return self._tail_pos
        n = self.decode_tail.counts[self.tail_index]
        return torch.arange(self.tail_start, self.tail_start + n, device=self.decode_tail.device)

    @tail_pos.setter
    def tail_pos(self, value) -> None:
        self._tail_pos = value

    @property
    def tail_length(self) -> int:
        if self.decode_tail is not None:
            return self.decode_tail.counts[self.tail_index]
        return 0 if self._tail_k is None else int(self._tail_k.shape[1])

    def _append(self, k_new: torch.Tensor, v_new: torch.Tensor, new_pos: torch.Tensor) -> None:
        """Add ``[H, q, D]`` new rows (at positions ``new_pos``) to the tail."""
        if self.decode_tail is not None:
            self.decode_tail.append(k_new[None], v_new[None])
        elif self._tail_k is None:
            self._tail_k, self._tail_v, self._tail_pos = k_new, v_new, new_pos
        else:
            self._tail_k = torch.cat([self._tail_k, k_new], dim=1)
            self._tail_v = torch.cat([self._tail_v, v_new], dim=1)
            self._tail_pos = torch.cat([self._tail_pos.to(new_pos.device), new_pos])

    def fast_step(self, key_states: torch.Tensor, value_states: torch.Tensor) -> FastStep | None:
        """Append the step's rows and return a :class:`FastStep`, or None (nothing done) for the generic path."""
        if not fast_ready(self) or (self.decode_tail is None and self._tail_k is not None):
            return None  # a layer that began on the generic path stays there
        device = key_states.device
        kplan = self.plans.get([self.base], self.dtype, device)
        if kplan is None:
            return None
        if self.decode_tail is None:
            self.decode_tail = kplan.new_tail(self.dtype, device)
        first, q = self.seen, key_states.shape[-2]
        step = self.plans.step(self.decode_tail, lambda: self.generic_rows(torch.arange(first, first + q,
                                                                                        device=device)))
        if step is None:
            return None
        self.decode_tail.append(key_states, value_states)
        self.seen += q
        return step

    # --- transformers protocol ---------------------------------------------------------
    def update(self, key_states, value_states, *args, **kwargs):
        # extra arguments are ignored: 5.2-5.3 pass ``cache_kwargs``, 5.24+ ``kwargs=`` (kvstack.hf.compat)
        if key_states.shape[0] != 1:
            raise ModelError(
                "this kvstack compressed cache holds one sequence; generate with batch size 1, or compress a "
                "list of contexts for a batched cache"
            )
        step = self.fast_step(key_states, value_states) if self.fast else None
        self.last_fast = step is not None
        if step is not None:  # the attention hook reads the packed rows through the GPU kernels
            return fast_marker(key_states, step)
        q = key_states.shape[-2]
        new_pos = torch.arange(self.seen, self.seen + q, device=key_states.device)
        self.seen += q
        self._append(key_states[0], value_states[0], new_pos)
        keys, values, meta = self._materialize(new_pos)
        self._trim()
        for policy in self.policies:
            policy.compress(self)
        keys = keys.unsqueeze(0)
        keys._kvstack = meta  # read by kvstack's attention hook
        return keys, values.unsqueeze(0)

    @property
    def base(self) -> KVLayer:
        return self.segments[0]

    def get_mask_sizes(self, query: torch.Tensor | int) -> tuple[int, int]:
        stored = sum(seg.max_length for seg in self.segments) + self.tail_length
        return stored + mask_query_length(query), max(self.seen - stored, 0)

    # --- CUDA graphs (kvstack.hf.graphs) ---------------------------------------------------
    def graph_tail(self) -> DecodeTail | None:
        """The tail a captured step would write, when the last step ran entirely through the kernels."""
        tail = self.decode_tail
        return tail if self.last_fast and tail is not None and tail.kernel_step else None

    def advance(self, tokens: int) -> None:
        """The host side of a replayed step: what ``update`` counts, the device work being in the graph."""
        self.seen += tokens
        self.decode_tail.advance(tokens)

    def generic_rows(self, query_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[1, H, S, D]`` keys (carrying their row metadata for the hook) and values: the generic path's view."""
        keys, values, meta = self._materialize(query_pos)
        keys = keys.unsqueeze(0)
        keys._kvstack = meta
        return keys, values.unsqueeze(0)

    # --- internals ---------------------------------------------------------------------
    def _materialize(self, query_pos: torch.Tensor):
        parts = [padded_rows(seg) for seg in self.segments]
        tail_k, tail_v = self.tail_k, self.tail_v
        dev = tail_k.device
        h, t = tail_k.shape[0], tail_k.shape[1]
        keys = torch.cat([k.to(dev, self.dtype) for k, _, _, _ in parts] + [tail_k], dim=1)
        values = torch.cat([v.to(dev, self.dtype) for _, v, _, _ in parts] + [tail_v], dim=1)
        pos = torch.cat([p.to(dev) for _, _, p, _ in parts] + [self.tail_pos.expand(h, t)], dim=1)
        tail_valid = torch.ones(h, t, dtype=torch.bool, device=dev)
        valid = torch.cat([m.to(dev) for _, _, _, m in parts] + [tail_valid], dim=1)
        return keys, values, RowMeta(pos, valid, query_pos, self.window)

    def _trim(self) -> None:
        """Drop rows no future token can attend to (sliding window), then what the policies evict."""
        if self.window is not None:
            floor = self.seen - (self.window - 1)
            self._drop(lambda pos: pos >= floor)
        for policy in self.policies:
            policy.evict(self)

    def _drop(self, keep_fn) -> None:
        """Drop rows failing ``keep_fn(positions)``. Segments whose encoding requantizes on
        ``select`` (channel groups) are trimmed lazily - their stale rows stay masked out by
        position until half can go - so their error does not compound at every step."""
        keeps = []
        for seg in self.segments:
            keep = keep_fn(seg.row_positions())
            if _select_requantizes(seg) and 2 * int((~keep).sum()) < keep.numel():
                keep = torch.ones_like(keep)
            keeps.append(keep)
        self.drop_rows(keeps, keep_fn(self.tail_pos.cpu()))

    def drop_rows(self, keeps: list[torch.Tensor], tail_keep: torch.Tensor) -> None:
        """Keep, per segment, the rows flagged in ``keeps`` and the tail tokens flagged in ``tail_keep``."""
        tail_keep = tail_keep.to(self.tail_pos.device)
        if not bool(tail_keep.all()):
            self.tail_k = self.tail_k[:, tail_keep]
            self.tail_v = self.tail_v[:, tail_keep]
            self.tail_pos = self.tail_pos[tail_keep]
        out = []
        for i, (seg, keep_rows) in enumerate(zip(self.segments, keeps, strict=True)):
            keep_rows = keep_rows.cpu()
            if not bool(keep_rows.all()):
                keep = [
                    torch.nonzero(keep_rows[off : off + n]).flatten()
                    for off, n in zip(seg.head_offsets(), seg.lengths, strict=True)
                ]
                seg = replace(seg.select_rows(keep), meta=seg.meta)
            if i == 0 or seg.max_length > 0:  # emptied decode blocks go away
                out.append(seg)
        self.segments = out

    def take_tail(self, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Remove the ``count`` oldest tail tokens; return their ``[H, n, D]`` keys, values and (CPU) positions."""
        keys, values = self.tail_k[:, :count].contiguous(), self.tail_v[:, :count].contiguous()
        positions = self.tail_pos[:count].cpu()
        self.tail_k, self.tail_v = self.tail_k[:, count:], self.tail_v[:, count:]
        self.tail_pos = self.tail_pos[count:]
        return keys, values, positions

    @property
    def nbytes(self) -> int:
        segs = sum(seg.nbytes for seg in self.segments)
        if self.decode_tail is not None:
            return segs + self.decode_tail.nbytes(self.tail_index)
        return segs + tensor_nbytes(self._tail_k) + tensor_nbytes(self._tail_v)


class CompressedCache(GraphableCache, Cache):
    """Pass as ``past_key_values`` to ``model.generate`` / ``model(...)``; built per generation."""

    def __init__(self, kv: KVCache, dtype: torch.dtype) -> None:
        layers = [CompressedLayer(layer, kv.context_length, dtype) for layer in kv.layers]
        super().__init__(layers=layers)
        self.kv = kv

    @property
    def nbytes(self) -> int:
        """Bytes held now: compressed rows plus the dense tail of generated tokens."""
        return sum(layer.nbytes for layer in self.layers)
