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

from kvstack.errors import ModelError
from kvstack.hf.attention import RowMeta
from kvstack.kv import KVCache, KVLayer, tensor_nbytes
from kvstack.stages.select import streaming_keep


def _select_requantizes(layer: KVLayer) -> bool:
    return any(getattr(enc, "select_requantizes", False) for enc in (layer.keys, layer.values))


class CompressedLayer(CacheLayerMixin):
    """One layer: compressed base rows + dense tail of new tokens, masked by true positions."""

    def __init__(self, base: KVLayer, seen: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.base = base
        self.seen = seen  # tokens ever processed (context + generated)
        self.window = base.sliding_window
        self.is_sliding = self.window is not None
        self.dtype = dtype
        self.tail_k: torch.Tensor | None = None  # [H, t, D]
        self.tail_v: torch.Tensor | None = None
        self.tail_pos = torch.empty(0, dtype=torch.long)
        self.is_initialized = True

    # --- transformers protocol ---------------------------------------------------------
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device

    def update(self, key_states, value_states, cache_kwargs=None):
        if key_states.shape[0] != 1:
            raise ModelError("a kvstack compressed cache holds one sequence; generate with batch size 1")
        q = key_states.shape[-2]
        new_pos = torch.arange(self.seen, self.seen + q, device=key_states.device)
        self.seen += q
        k_new, v_new = key_states[0], value_states[0]
        if self.tail_k is None:
            self.tail_k, self.tail_v, self.tail_pos = k_new, v_new, new_pos
        else:
            self.tail_k = torch.cat([self.tail_k, k_new], dim=1)
            self.tail_v = torch.cat([self.tail_v, v_new], dim=1)
            self.tail_pos = torch.cat([self.tail_pos.to(new_pos.device), new_pos])
        keys, values, meta = self._materialize(new_pos)
        self._trim()
        keys = keys.unsqueeze(0)
        keys._kvstack = meta  # read by kvstack's attention hook
        return keys, values.unsqueeze(0)

    def get_mask_sizes(self, cache_position: torch.Tensor) -> tuple[int, int]:
        stored = self.base.max_length + (0 if self.tail_k is None else self.tail_k.shape[1])
        q = cache_position.shape[0]
        return stored + q, max(self.seen - stored, 0)

    def get_seq_length(self) -> int:
        return self.seen

    def get_max_cache_shape(self) -> int:
        return self.window if self.window is not None else -1

    def reset(self) -> None:
        raise ModelError("a compressed cache cannot be reset in place; build a new one from the KVCache")

    def reorder_cache(self, beam_idx) -> None:
        raise ModelError("beam search is not supported with a kvstack cache; use greedy or sampling")

    def crop(self, max_length: int) -> None:
        raise ModelError("cropping (assisted decoding) is not supported with a kvstack cache")

    def batch_repeat_interleave(self, repeats: int) -> None:
        if repeats != 1:
            raise ModelError("a kvstack cache holds one sequence; num_return_sequences must be 1")

    def batch_select_indices(self, indices) -> None:
        raise ModelError("a kvstack cache holds one sequence; batch selection is not supported")

    # --- internals ---------------------------------------------------------------------
    def _materialize(self, query_pos: torch.Tensor):
        bk, bv, bpos, bvalid = self.base.padded()
        bk, bv = bk.to(self.dtype), bv.to(self.dtype)
        h = bk.shape[0]
        t = self.tail_k.shape[1]
        keys = torch.cat([bk.to(self.tail_k.device), self.tail_k], dim=1)
        values = torch.cat([bv.to(self.tail_v.device), self.tail_v], dim=1)
        pos = torch.cat([bpos.to(self.tail_pos.device), self.tail_pos.expand(h, t)], dim=1)
        tail_valid = torch.ones(h, t, dtype=torch.bool, device=keys.device)
        valid = torch.cat([bvalid.to(keys.device), tail_valid], dim=1)
        return keys, values, RowMeta(pos, valid, query_pos, self.window)

    def _trim(self) -> None:
        """Drop rows no future token can attend to (sliding window) or over a decode budget."""
        budget = self.base.meta.get("decode_budget")
        if self.window is not None:
            floor = self.seen - (self.window - 1)
            self._drop(lambda pos: pos >= floor, lazy_base=_select_requantizes(self.base))
        if budget is not None:
            sink, window = budget
            # per KV head: its sinks and the newest `window` of its own rows (base + shared tail).
            # The tail holds the newest tokens of every head, so its kept part is the same for all.
            base_pos, tail_pos = self.base.row_positions(), self.tail_pos.cpu()
            keep_rows = torch.zeros(base_pos.numel(), dtype=torch.bool)
            tail_keep = torch.zeros(tail_pos.numel(), dtype=torch.bool)
            for off, n in zip(self.base.head_offsets(), self.base.lengths, strict=True):
                keep = streaming_keep(torch.cat([base_pos[off : off + n], tail_pos]), sink, window)
                keep_rows[off + keep[keep < n]] = True
                tail_keep[keep[keep >= n] - n] = True
            self._drop_rows(keep_rows, tail_keep)

    def _drop(self, keep_fn, lazy_base: bool = False) -> None:
        """Drop rows failing ``keep_fn(positions)``. ``lazy_base`` defers base rows (still masked
        out by position) until half the base can go, so requantizing encodings are not
        requantized - and their error compounded - at every step."""
        keep_rows = keep_fn(self.base.row_positions())
        if lazy_base and 2 * int((~keep_rows).sum()) < keep_rows.numel():
            keep_rows = torch.ones_like(keep_rows)
        self._drop_rows(keep_rows, keep_fn(self.tail_pos.cpu()))

    def _drop_rows(self, keep_rows: torch.Tensor, tail_keep: torch.Tensor) -> None:
        """Keep base rows where ``keep_rows`` (one flag per row) and tail tokens where ``tail_keep``."""
        tail_keep = tail_keep.to(self.tail_pos.device)
        if not bool(tail_keep.all()):
            self.tail_k = self.tail_k[:, tail_keep]
            self.tail_v = self.tail_v[:, tail_keep]
            self.tail_pos = self.tail_pos[tail_keep]
        keep_rows = keep_rows.cpu()
        if bool(keep_rows.all()):
            return
        offsets = self.base.head_offsets()
        keep = [
            torch.nonzero(keep_rows[off : off + n]).flatten()
            for off, n in zip(offsets, self.base.lengths, strict=True)
        ]
        self.base = replace(self.base.select_rows(keep), meta=self.base.meta)

    @property
    def nbytes(self) -> int:
        return self.base.nbytes + tensor_nbytes(self.tail_k) + tensor_nbytes(self.tail_v)


class CompressedCache(Cache):
    """Pass as ``past_key_values`` to ``model.generate`` / ``model(...)``; built per generation."""

    def __init__(self, kv: KVCache, dtype: torch.dtype) -> None:
        layers = [CompressedLayer(layer, kv.context_length, dtype) for layer in kv.layers]
        super().__init__(layers=layers)
        self.kv = kv

    @property
    def nbytes(self) -> int:
        """Bytes held now: compressed rows plus the dense tail of generated tokens."""
        return sum(layer.nbytes for layer in self.layers)
