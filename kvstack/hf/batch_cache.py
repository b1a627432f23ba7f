"""A transformers ``Cache`` over B compressed sequences, for one batched ``model.generate``.

Each layer of :class:`BatchedCompressedCache` holds one :class:`~kvstack.hf.cache.CompressedLayer`
per sequence, so every sequence keeps its own ragged rows, true positions, sliding-window
trimming, decode budget and KIVI decode blocks - exactly the state the single-sequence cache
would have. Padding exists only for the duration of an attention call: the layer pads the B
sequences' keys to the longest and hands the attention hook a mask built per sequence from
true positions (:class:`BatchRowMeta`).

On CUDA, when every sequence's layer is in a shape the kernels read, nothing is padded at all:
one kernel plan covers the B x KV-heads segments (ragged lengths, a length table on the device;
the sequences' packed rows are concatenated once per generation, a copy of the compressed cache
for as long as the generation runs) and one shared
:class:`~kvstack.hf.decode_tail.DecodeTail` holds every sequence's new tokens, so a step costs
two launches per layer whatever the batch size.

The inputs transformers sees are laid out by :func:`batch_layout`: row ``i`` is
``[pad][context_i][pad][question_i]``, the contexts right-aligned at column ``S`` (the longest
context) and the questions right-aligned at the end. ``get_seq_length`` reports ``S``, so the
first step processes the question block; the attention mask's cumulative sum gives each token
its true position (transformers derives ``position_ids`` from it), and the question padding of
row ``i`` never enters sequence ``i``'s cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from kvstack.errors import ModelError
from kvstack.hf.attention import additive_mask
from kvstack.hf.cache import CompressedLayer, KvstackLayerOps, fast_marker
from kvstack.hf.compat import mask_query_length
from kvstack.hf.decode_tail import DecodeTail
from kvstack.hf.fast_decode import FastStep, PlanHolder, fast_ready
from kvstack.hf.graphs import GraphableCache
from kvstack.kv import KVCache, KVLayer


@dataclass
class BatchRowMeta:
    """Attached to the batched key tensor: each sequence's row positions, validity and query positions."""

    positions: list[torch.Tensor]  # per sequence [H_kv, S_i] int64
    valid: list[torch.Tensor]  # per sequence [H_kv, S_i] bool
    query_positions: list[torch.Tensor]  # per sequence [q] int64 (padded queries repeat the first real one)
    window: int | None
    width: int  # S: the padded key length of the call

    def mask(self, num_query_heads: int, dtype: torch.dtype) -> torch.Tensor:
        """Additive mask ``[B, Hq, q, S]``: sequence ``i``'s own mask, its padding columns dropped."""
        parts = []
        for pos, valid, qpos in zip(self.positions, self.valid, self.query_positions, strict=True):
            m = additive_mask(pos, valid, qpos, self.window, num_query_heads, dtype)
            pad = self.width - m.shape[-1]
            if pad:
                m = torch.nn.functional.pad(m, (0, pad), value=torch.finfo(dtype).min)
            parts.append(m)
        return torch.cat(parts, dim=0)


def _pad_to(t: torch.Tensor, width: int, dim: int, value=0) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t, t.new_full(shape, value)], dim=dim)


class BatchedCompressedLayer(KvstackLayerOps, CacheLayerMixin):
    """One layer of B sequences: a :class:`CompressedLayer` each, padded together per call."""

    def __init__(self, bases: list[KVLayer], seen: list[int], question_pads: list[int], start: int,
                 dtype: torch.dtype) -> None:
        super().__init__()
        # the rows never take the kernels on their own: the batch does, over all of them at once (one plan)
        self.rows = [CompressedLayer(b, s, dtype, fast=False) for b, s in zip(bases, seen, strict=True)]
        self.plans = PlanHolder()
        self.decode_tail: DecodeTail | None = None  # the rows' shared tail on the fast path
        self.last_fast = False
        self.pending_pads = list(question_pads)  # padding columns still to skip, per sequence
        self.seen = start  # what transformers sees: the aligned context width + tokens processed
        self.window = self.rows[0].window
        self.is_sliding = self.rows[0].is_sliding
        self.dtype = dtype
        self.is_initialized = True

    # --- transformers protocol (the rest: KvstackLayerOps) -------------------------------
    def update(self, key_states, value_states, *args, **kwargs):
        b, _, q, _ = key_states.shape
        if b != len(self.rows):
            raise ModelError(f"this batched kvstack cache holds {len(self.rows)} sequences; the model ran {b}")
        skips = [min(pad, q) for pad in self.pending_pads]
        step = self._fast_step(key_states, value_states, skips)
        self.last_fast = step is not None
        self.seen += q
        self.pending_pads = [pad - skip for pad, skip in zip(self.pending_pads, skips, strict=True)]
        if step is not None:  # the attention hook reads every sequence's packed rows in one launch
            return fast_marker(key_states, step)
        if self.decode_tail is not None:  # began on the kernels (turned off since): the shared tail keeps the rows
            return self._append_shared(key_states, value_states, skips)()
        rows = [row.update(key_states[i : i + 1, :, skip:], value_states[i : i + 1, :, skip:])
                for i, (row, skip) in enumerate(zip(self.rows, skips, strict=True))]
        return self._stack(rows, skips)

    def graph_tail(self) -> DecodeTail | None:
        """The shared tail a captured step would write, when the last step ran entirely through the kernels."""
        tail = self.decode_tail
        return tail if self.last_fast and tail is not None and tail.kernel_step else None

    def advance(self, tokens: int) -> None:
        """The host side of a replayed decode step (every sequence one token; no padding left)."""
        self.seen += tokens
        for row in self.rows:
            row.seen += tokens
        self.decode_tail.advance(tokens)

    def _stack(self, rows: list[tuple[torch.Tensor, torch.Tensor]], skips: list[int]):
        """The sequences' ``[1, H, S_i, D]`` generic rows padded into one ``[B, H, S, D]`` call, with its mask."""
        keys, values, metas = [], [], []
        for (k, v), skip in zip(rows, skips, strict=True):
            meta = k._kvstack
            qpos = meta.query_positions
            if skip:  # padded queries: give them a real position so no row of the mask is empty
                qpos = torch.cat([qpos[:1].expand(skip), qpos])
            keys.append(k[0])
            values.append(v[0])
            metas.append((meta.positions, meta.valid, qpos))
        width = max(k.shape[1] for k in keys)
        batched_k = torch.stack([_pad_to(k, width, 1) for k in keys])
        batched_v = torch.stack([_pad_to(v, width, 1) for v in values])
        batched_k._kvstack = BatchRowMeta(  # read by kvstack's attention hook
            [m[0] for m in metas], [m[1] for m in metas], [m[2] for m in metas], self.window, width
        )
        return batched_k, batched_v

    def _fast_step(self, key_states: torch.Tensor, value_states: torch.Tensor, skips: list[int]) -> FastStep | None:
        """Append every sequence's new rows to the shared tail and return the batch's kernel step, or None."""
        if not all(fast_ready(row) for row in self.rows):
            return None
        if self.decode_tail is None and any(row.tail_length for row in self.rows):
            return None  # began on the generic path: stays there
        kplan = self.plans.get([row.base for row in self.rows], self.dtype, key_states.device)
        if kplan is None:
            return None
        if self.decode_tail is None:
            self.decode_tail = kplan.new_tail(self.dtype, key_states.device)
            for i, row in enumerate(self.rows):
                row.decode_tail, row.tail_index = self.decode_tail, i
        if not self.plans.matches(self.decode_tail):
            return None
        return self.plans.step(self.decode_tail, self._append_shared(key_states, value_states, skips))

    def _append_shared(self, key_states: torch.Tensor, value_states: torch.Tensor, skips: list[int]):
        """Append the step's rows to the shared tail; returns the generic path's view of the step (a callable)."""
        device, q = key_states.device, key_states.shape[-2]
        firsts = [row.seen for row in self.rows]
        self.decode_tail.append(key_states, value_states, skips)
        for row, skip in zip(self.rows, skips, strict=True):
            row.seen += q - skip
        return lambda: self._stack([row.generic_rows(torch.arange(first, first + q - skip, device=device))
                                    for row, first, skip in zip(self.rows, firsts, skips, strict=True)], skips)

    def get_mask_sizes(self, query: torch.Tensor | int) -> tuple[int, int]:
        # transformers' own mask is replaced by the hook's; these sizes only keep its indexing in range
        stored = max(row.get_mask_sizes(0)[0] for row in self.rows)
        return stored + mask_query_length(query), max(self.seen - stored, 0)

    @property
    def nbytes(self) -> int:
        return sum(row.nbytes for row in self.rows)


@dataclass(frozen=True)
class BatchLayout:
    """Where each sequence sits in the padded inputs of one batched ``model.generate``."""

    input_ids: torch.Tensor  # [B, S + M]
    attention_mask: torch.Tensor  # [B, S + M], 0 on padding
    context_width: int  # S: the longest context
    question_pads: list[int]  # M - Q_i: padding columns before question i


def batch_layout(contexts: list[torch.Tensor], questions: list[torch.Tensor], pad_id: int) -> BatchLayout:
    """Row ``i`` = ``[pad][context_i][pad][question_i]``: contexts end at column ``S``, questions at the end."""
    width = max(c.numel() for c in contexts)
    qwidth = max(q.numel() for q in questions)
    n = len(contexts)
    ids = torch.full((n, width + qwidth), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width + qwidth), dtype=torch.long)
    for i, (c, q) in enumerate(zip(contexts, questions, strict=True)):
        ids[i, width - c.numel() : width] = c.long().cpu()
        ids[i, width + qwidth - q.numel() :] = q.long().cpu()
        mask[i, width - c.numel() : width] = 1
        mask[i, width + qwidth - q.numel() :] = 1
    return BatchLayout(ids, mask, width, [qwidth - q.numel() for q in questions])


class BatchedCompressedCache(GraphableCache, Cache):
    """Pass as the cache of ``model.generate`` with :func:`batch_layout`'s inputs; built per generation."""

    def __init__(self, caches: list[KVCache], layout: BatchLayout, dtype: torch.dtype) -> None:
        seen = [c.context_length for c in caches]
        layers = [
            BatchedCompressedLayer([c.layers[li] for c in caches], seen, layout.question_pads,
                                   layout.context_width, dtype)
            for li in range(len(caches[0].layers))
        ]
        super().__init__(layers=layers)
        self.caches = caches

    @property
    def nbytes(self) -> int:
        """Bytes held now: every sequence's compressed rows plus its dense tail of generated tokens."""
        return sum(layer.nbytes for layer in self.layers)
