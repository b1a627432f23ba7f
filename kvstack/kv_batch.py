"""A batch of compressed caches: B sequences of different lengths behind one object.

:func:`kvstack.compress` returns a :class:`KVBatch` when given a list of contexts. Each
sequence stays its own ragged :class:`~kvstack.kv.KVCache` (its own budgets, per-head
selection and length): nothing is padded in storage, so ``nbytes`` is the sum of the
sequences' bytes. Padding happens only at decode time, inside
:class:`~kvstack.hf.batch_cache.BatchedCompressedCache`, and only for the call.

A batch is checked when built: every sequence from the same model (fingerprint and
dtype), on the same device - :func:`kvstack.generate` runs them through one model in
one ``model.generate`` call, so a mixed batch could only fail later, less clearly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import torch

from kvstack.errors import InputError, ModelError
from kvstack.kv import KVCache, baseline_dtype


def _devices(obj, out: set[torch.device], depth: int = 0) -> None:
    """Add the device of every tensor reachable from an encoding's fields (nested encodings too)."""
    if isinstance(obj, torch.Tensor):
        out.add(obj.device)
    elif depth > 4 or obj is None or isinstance(obj, (str, int, float, bool, torch.dtype)):
        return
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            _devices(item, out, depth + 1)
    elif dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            _devices(getattr(obj, f.name), out, depth + 1)


def cache_devices(cache: KVCache) -> set[torch.device]:
    """Every device the compressed rows of ``cache`` live on (one, for a cache kvstack built)."""
    out: set[torch.device] = set()
    for layer in cache.layers:
        _devices(layer.keys, out)
        _devices(layer.values, out)
    return out


class KVBatch:
    """B compressed sequences, ragged: ``batch[i]`` is the :class:`KVCache` of sequence ``i``.

    Built by ``kvstack.compress(model, [ids_1, ..., ids_B], ...)``, or from caches that one
    model compressed (``KVBatch([cache_a, cache_b])``). Saving goes one sequence at a time
    (``kvstack.save(batch[i], path)``).
    """

    def __init__(self, caches: Sequence[KVCache]) -> None:
        caches = list(caches)
        if not caches:
            raise InputError("a batch needs at least one sequence; pass a non-empty list of contexts")
        for i, cache in enumerate(caches):
            if not isinstance(cache, KVCache):
                raise InputError(
                    f"sequence {i} of the batch is a {type(cache).__name__}, not a kvstack.KVCache from "
                    "kvstack.compress"
                )
        first = caches[0]
        for i, cache in enumerate(caches[1:], start=1):
            if (cache.model_fingerprint != first.model_fingerprint or cache.dense_dtype != first.dense_dtype
                    or len(cache.layers) != len(first.layers)):
                raise ModelError(
                    f"sequence {i} of the batch was built by another model than sequence 0 (fingerprint "
                    f"{cache.model_fingerprint or 'none'} / {cache.dense_dtype}, {len(cache.layers)} layers vs "
                    f"{first.model_fingerprint or 'none'} / {first.dense_dtype}, {len(first.layers)} layers); "
                    "a batch runs through one model: compress every context with the same model"
                )
        devices = [cache_devices(c) for c in caches]
        every = set().union(*devices)
        if len(every) > 1:
            where = ", ".join(f"sequence {i}: {'/'.join(sorted(map(str, d)))}" for i, d in enumerate(devices))
            raise InputError(
                f"the sequences of a batch are on different devices ({where}); a batch decodes on one "
                "device: compress every context with the model on that device"
            )
        self.caches = caches

    # --- a sequence of KVCache ----------------------------------------------------------
    def __len__(self) -> int:
        return len(self.caches)

    def __getitem__(self, index: int) -> KVCache:
        return self.caches[index]

    def __iter__(self) -> Iterator[KVCache]:
        return iter(self.caches)

    def __repr__(self) -> str:
        return f"KVBatch({len(self)} sequences, lengths {self.context_lengths}, {self.nbytes} bytes)"

    # --- what a single KVCache says, summed ---------------------------------------------
    @property
    def model_fingerprint(self) -> str:
        return self.caches[0].model_fingerprint

    @property
    def dense_dtype(self) -> torch.dtype:
        return self.caches[0].dense_dtype

    @property
    def context_lengths(self) -> list[int]:
        return [c.context_length for c in self.caches]

    @property
    def nbytes(self) -> int:
        """Bytes the B compressed sequences really hold, summed (no padding is stored)."""
        return sum(c.nbytes for c in self.caches)

    @property
    def dense_nbytes(self) -> int:
        """Bytes the same B contexts take in plain caches in the model's dtype, summed (unpadded)."""
        return sum(c.dense_nbytes for c in self.caches)

    @property
    def tokens_kept(self) -> int:
        return sum(c.tokens_kept for c in self.caches)

    @property
    def ratio(self) -> float:
        """Times smaller than plain caches of the same contexts in the model's own dtype."""
        return self.dense_nbytes / max(self.nbytes, 1)

    def ratio_vs(self, baseline: str = "fp16") -> float:
        """Times smaller than plain caches of ``baseline`` ("fp16", "bf16", "fp32" or "model")."""
        if baseline == "model":
            return self.ratio
        dtype = baseline_dtype(baseline)
        return sum(c.dense_nbytes_as(dtype) for c in self.caches) / max(self.nbytes, 1)
