"""The data model: a compressed KV cache is plain data that stages transform.

A :class:`KVLayer` holds one layer's keys and values for one sequence, *ragged by
head*: head ``h`` keeps ``lengths[h]`` tokens, stored back to back (head-major) in
row tensors of shape ``[sum(lengths), head_dim]``. Nothing is padded, so per-head
budgets really save memory. Rows are kept in an :class:`Encoded` container (dense
floats, packed integer codes with scales, ...), so a stage can change how rows are
stored without the rest of the system knowing.

``positions`` records which original token each row came from, which is what lets
attention after eviction stay correct: RoPE of new tokens continues from the
original length, and the causal/sliding masks use true positions.

The containers themselves (:class:`Encoded`, :class:`DenseRows`, packed codes, ...) are the
storage layer beneath this module, :mod:`kvstack.rows`; ``Encoded``, ``DenseRows`` and
``tensor_nbytes`` are named here too because every layer is built of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from kvstack.errors import InputError
from kvstack.rows.base import Encoded, tensor_nbytes
from kvstack.rows.dense import DenseRows

# Plain-cache dtypes a compression ratio can be quoted against (``KVCache.ratio_vs``).
BASELINES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def baseline_dtype(baseline: str) -> torch.dtype:
    """The dtype of a ratio baseline name ("fp16", "bf16", "fp32"); InputError for any other name."""
    dtype = BASELINES.get(baseline)
    if dtype is None:
        raise InputError(f"unknown ratio baseline {baseline!r}: use one of {', '.join([*BASELINES, 'model'])}")
    return dtype


@dataclass(frozen=True)
class KVLayer:
    """One layer of one sequence: keys/values ragged by KV head, and where each row came from.

    Attributes:
        keys, values: encoded rows, head-major, ``[sum(lengths), head_dim]``.
        lengths: tokens kept per KV head (a tuple of ints, length ``num_heads``).
        positions: original token position of each row. ``None`` means the rows are
            exactly tokens ``0..L-1`` for every head (no eviction: nothing to store);
            a ``[L]`` tensor is shared by all heads (uniform eviction); a
            ``[sum(lengths)]`` tensor gives each row its own position (per-head eviction).
        sliding_window: if the model's layer attends to a window ``W`` only, else ``None``.
    """

    keys: Encoded
    values: Encoded
    lengths: tuple[int, ...]
    positions: torch.Tensor | None = None
    sliding_window: int | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = sum(self.lengths)
        if self.keys.shape[0] != n or self.values.shape[0] != n:
            raise InputError(
                f"KVLayer rows ({self.keys.shape[0]} keys, {self.values.shape[0]} values) do not match "
                f"sum(lengths)={n}; build layers with KVLayer.from_dense or keep rows head-major."
            )
        if self.positions is not None and self.positions.numel() not in (n, self.lengths[0]):
            raise InputError(f"positions has {self.positions.numel()} entries; expected {n} or one per token")

    # --- construction -------------------------------------------------------------
    @classmethod
    def from_dense(
        cls,
        keys: torch.Tensor,
        values: torch.Tensor,
        positions: torch.Tensor | None = None,
        sliding_window: int | None = None,
    ) -> KVLayer:
        """From uniform ``[num_heads, L, head_dim]`` keys/values (a batch-1 HF cache layer, squeezed)."""
        h, seq, d = keys.shape
        return cls(
            keys=DenseRows(keys.reshape(h * seq, d)),
            values=DenseRows(values.reshape(h * seq, values.shape[-1])),
            lengths=(seq,) * h,
            positions=None if positions is None else positions.to(torch.int32),
            sliding_window=sliding_window,
        )

    # --- shape --------------------------------------------------------------------
    @property
    def num_heads(self) -> int:
        return len(self.lengths)

    @property
    def uniform(self) -> bool:
        return len(set(self.lengths)) <= 1

    @property
    def max_length(self) -> int:
        return max(self.lengths) if self.lengths else 0

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes + tensor_nbytes(self.positions)

    def head_offsets(self) -> list[int]:
        out, acc = [], 0
        for n in self.lengths:
            out.append(acc)
            acc += n
        return out

    def row_positions(self) -> torch.Tensor:
        """Original position of every row, ``[sum(lengths)]`` int64."""
        if self.positions is None:
            return torch.arange(self.max_length, dtype=torch.long).repeat(self.num_heads)
        if self.positions.numel() == sum(self.lengths):
            return self.positions.long()
        return self.positions.long().repeat(self.num_heads)

    def padded(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode to ``keys, values [H, Lmax, D]``, ``positions [H, Lmax]`` and ``valid [H, Lmax]``.

        Uniform layers are a reshape (no copy beyond decoding); ragged ones pad to the
        longest head and mark padding invalid, for attention to mask out.
        """
        k, v = self.keys.decode(), self.values.decode()
        h, lmax = self.num_heads, self.max_length
        pos = self.row_positions().to(k.device)
        if self.uniform:
            valid = torch.ones(h, lmax, dtype=torch.bool, device=k.device)
            # explicit head_dim: a layer whose rows were all dropped (sliding window) has 0 rows
            return (
                k.reshape(h, lmax, k.shape[-1]),
                v.reshape(h, lmax, v.shape[-1]),
                pos.reshape(h, lmax),
                valid,
            )
        lengths = torch.tensor(self.lengths, device=k.device)
        valid = torch.arange(lmax, device=k.device)[None, :] < lengths[:, None]
        kp = k.new_zeros(h, lmax, k.shape[-1])
        vp = v.new_zeros(h, lmax, v.shape[-1])
        pp = torch.zeros(h, lmax, dtype=torch.long, device=k.device)
        kp[valid], vp[valid], pp[valid] = k, v, pos
        return kp, vp, pp, valid

    # --- transformation helpers for stages ---------------------------------------------
    def select_rows(self, keep: list[torch.Tensor]) -> KVLayer:
        """Keep, for each head ``h``, the rows ``keep[h]`` (indices into that head's own rows).

        Stages that evict tokens call this; it works on any encoding that supports
        ``select`` and keeps positions exact. When every head keeps the same positions,
        positions are stored once for the layer.
        """
        if len(keep) != self.num_heads:
            raise InputError(f"select_rows needs one index tensor per head ({self.num_heads})")
        offsets = self.head_offsets()
        parts = [k.long() + off for k, off in zip(keep, offsets, strict=True)]
        rows = torch.cat(parts) if keep else torch.empty(0)
        all_pos = self.row_positions()
        new_pos = all_pos[rows]
        lengths = tuple(int(k.numel()) for k in keep)
        per_head = list(torch.split(new_pos, list(lengths)))
        if len(set(lengths)) == 1 and all(torch.equal(per_head[0], p) for p in per_head[1:]):
            shared = per_head[0]
            is_prefix = torch.equal(shared, torch.arange(shared.numel()))
            positions = None if is_prefix and self.positions is None else shared.to(torch.int32)
        else:
            positions = new_pos.to(torch.int32)
        return replace(
            self,
            keys=self.keys.select(rows),
            values=self.values.select(rows),
            lengths=lengths,
            positions=positions,
        )


@dataclass
class KVCache:
    """A whole compressed cache for one sequence: what :func:`kvstack.compress` returns.

    It is immutable in use: :func:`kvstack.generate` wraps it in a fresh Hugging Face
    cache per call, so one compressed context serves many questions.

    Attributes:
        layers: one :class:`KVLayer` per attention layer that owns a cache.
        context_ids: the token ids the cache was built from (``[T]`` int32).
        dense_dtype: the model's dtype, for ``dense_nbytes``.
        recipe: the recipe string that produced it.
        stats: timings and other facts recorded by the driver (seconds, counts).
    """

    layers: list[KVLayer]
    context_ids: torch.Tensor
    dense_dtype: torch.dtype
    recipe: str = "identity"
    model_fingerprint: str = ""
    stats: dict = field(default_factory=dict)
    dense_layout: list[tuple[int, int, int | None]] = field(default_factory=list)

    @property
    def context_length(self) -> int:
        return int(self.context_ids.numel())

    @property
    def nbytes(self) -> int:
        """Bytes the compressed K/V really hold: codes, scales, kept positions (not the token ids)."""
        return sum(layer.nbytes for layer in self.layers)

    @property
    def dense_nbytes(self) -> int:
        """Bytes the same context takes in a plain Hugging Face cache in the model's dtype.

        Sliding-window layers count what a plain cache keeps for them (the window), so
        the ratio credits kvstack only for what it adds.
        """
        return self.dense_nbytes_as(self.dense_dtype)

    def dense_nbytes_as(self, dtype: torch.dtype) -> int:
        """Bytes of a plain cache of this context holding ``dtype`` elements (see :attr:`dense_nbytes`)."""
        elem = torch.empty((), dtype=dtype).element_size()
        total = 0
        for heads, head_dim, window in self.dense_layout:
            tokens = self.context_length if window is None else min(self.context_length, window - 1)
            total += 2 * heads * head_dim * tokens * elem
        return total

    @property
    def ratio(self) -> float:
        """How many times smaller than a plain cache in the *model's own* dtype (:attr:`dense_dtype`).

        A model loaded in fp32 (the GGUF zoo models) doubles this figure against the usual fp16
        baseline: say which one you quote, or use :meth:`ratio_vs`.
        """
        return self.dense_nbytes / max(self.nbytes, 1)

    def ratio_vs(self, baseline: str = "fp16") -> float:
        """How many times smaller than a plain cache of ``baseline``: "fp16", "bf16", "fp32" or "model".

        ``cache.ratio_vs("fp16")`` is the figure papers and kvstack's presets quote; "model" is
        :attr:`ratio` (the dtype the model was loaded in).
        """
        if baseline == "model":
            return self.ratio
        return self.dense_nbytes_as(baseline_dtype(baseline)) / max(self.nbytes, 1)

    @property
    def dense_dtype_name(self) -> str:
        """The model's dtype as a baseline name ("fp32", "fp16", "bf16"), for saying what :attr:`ratio` is against."""
        return next((name for name, dt in BASELINES.items() if dt == self.dense_dtype), str(self.dense_dtype))

    @property
    def tokens_kept(self) -> int:
        """Total (layer, head, token) entries kept."""
        return sum(sum(layer.lengths) for layer in self.layers)

    def map_layers(self, fn, layers: set[int] | None = None) -> KVCache:
        """A new cache with ``fn(index, layer)`` applied to the chosen layers (all by default)."""
        new = [
            fn(i, layer) if layers is None or i in layers else layer for i, layer in enumerate(self.layers)
        ]
        return replace(self, layers=new)
