"""The dense tail of generated tokens as the decode kernels read it: preallocated, lengths on the device.

A compressed layer on the fast path keeps the tokens generated since the context here instead
of in a tensor grown by ``torch.cat`` every step. Why:

* **Graph capture.** A captured step must write its new key/value rows at an address that
  does not change and must not read a length back from the device. The rows go into
  ``[S, capacity, D]`` buffers (``S`` segments = sequences x KV heads) at positions taken from
  a device-side length per segment; the kernels read the same lengths. Only growing past the
  capacity (a new *bucket*) reallocates, and that is decided from host-side counts, which
  follow from the shapes the model runs with, never from device values.
* **Rotated layouts.** When the packed rows were stored rotated (``int4``'s default ``rot``), the
  kernel attends in the rotated basis: the query is rotated by the keys' ``R`` and the output
  un-rotated by the values' ``R``. New tokens must be in the same basis, so they are rotated as
  they are appended; :meth:`DecodeTail.rows` rotates them back for the generic path.
* **Batches.** One buffer holds every sequence's tail; each sequence has its own count (the
  question block of a padded batch appends a different number of tokens to each).
"""

from __future__ import annotations

import torch

from kvstack.kernels.layout import Segments

# capacities are multiples of this: a bucket lasts this many steps at least
TAIL_BLOCK = 64


def _capturing(device: torch.device) -> bool:
    """Inside a CUDA graph capture, where offsets known on the host would be frozen into the graph."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _round_up(n: int, block: int) -> int:
    return max(block, -(-n // block) * block)


class DecodeTail:
    """Generated tokens of ``sequences`` x ``heads`` segments, in the basis of the packed rows.

    ``key_rot`` / ``value_rot``: ``R`` (float32 ``[D, D]``) of rotated keys / values, or None.
    """

    def __init__(self, sequences: int, heads: int, dim: int, dtype: torch.dtype, device: torch.device,
                 key_rot: torch.Tensor | None = None, value_rot: torch.Tensor | None = None,
                 capacity: int | None = None, seeds: tuple = (None, None)) -> None:
        self.seeds = seeds  # the rotations' (keys, values) seeds, to compare bases without reading R back
        self.sequences, self.heads, self.dim = sequences, heads, dim
        self.dtype, self.device = dtype, device
        self.key_rot, self.value_rot = key_rot, value_rot
        self.kernel_step = False  # the last step attended through the kernels (kvstack.hf.fast_decode.FastStep)
        self.counts = [0] * sequences  # host copy of each sequence's length (from shapes, never read back)
        s = sequences * heads
        self.lengths = torch.zeros(s, dtype=torch.int32, device=device)
        self._alloc(_round_up(capacity or TAIL_BLOCK, TAIL_BLOCK))

    def _alloc(self, capacity: int) -> None:
        s = self.sequences * self.heads
        k = torch.zeros(s, capacity, self.dim, dtype=self.dtype, device=self.device)
        v = torch.zeros_like(k)
        if getattr(self, "k", None) is not None:
            n = self.capacity
            k[:, :n], v[:, :n] = self.k, self.v
        self.k, self.v, self.capacity = k, v, capacity
        starts = torch.arange(s, dtype=torch.int32, device=self.device) * capacity
        # the kernels' tail table: a segment's rows start at s * capacity; ``max_length`` (the
        # capacity, not the longest tail) sizes the launch, so it stays the same within a bucket
        self.table = Segments(starts, self.lengths, torch.zeros_like(starts), capacity, s * capacity)

    @property
    def longest(self) -> int:
        return max(self.counts)

    def reserve(self, new: int) -> None:
        """Make room for ``new`` more tokens per sequence (a larger bucket when they would not fit)."""
        if self.longest + new > self.capacity:
            self._alloc(_round_up(max(self.longest + new, 2 * self.capacity), TAIL_BLOCK))

    def _basis(self, x: torch.Tensor, rot: torch.Tensor | None) -> torch.Tensor:
        """Rows into the packed rows' basis: ``x R^T`` (rows stored rotated), else as they are."""
        return x.to(self.dtype) if rot is None else (x.float() @ rot.T).to(self.dtype)

    def append(self, keys: torch.Tensor, values: torch.Tensor, skips: list[int] | None = None) -> None:
        """Add ``[B, H, q, D]`` new rows; sequence ``i`` skips its first ``skips[i]`` (padding) columns.

        Without skips the rows land at the device-side lengths: under CUDA-graph capture by a
        scatter that reads them on the device (a replay then writes where the lengths say), eagerly
        by a slice at the host's count when every sequence has the same; with skips, per sequence.
        """
        b, h, q, d = keys.shape
        self.reserve(q)
        keys, values = self._basis(keys, self.key_rot), self._basis(values, self.value_rot)
        if not skips or not any(skips):
            s, n = b * h, self.counts[0]
            if _capturing(self.device) or any(c != n for c in self.counts):
                index = (self.lengths.long().view(s, 1) + torch.arange(q, device=self.device)).view(s, q, 1)
                index = index.expand(s, q, d)
                self.k.scatter_(1, index, keys.reshape(s, q, d))
                self.v.scatter_(1, index, values.reshape(s, q, d))
            else:  # eagerly, equal counts: the host knows where the rows go (fewer ops than the scatter)
                self.k[:, n : n + q] = keys.reshape(s, q, d)
                self.v[:, n : n + q] = values.reshape(s, q, d)
            self.lengths += q
            self.counts = [c + q for c in self.counts]
            return
        for i, skip in enumerate(skips):
            n, add = self.counts[i], q - skip
            rows = slice(i * h, (i + 1) * h)
            self.k[rows, n : n + add] = keys[i, :, skip:]
            self.v[rows, n : n + add] = values[i, :, skip:]
            self.lengths[rows] += add
            self.counts[i] = n + add

    def advance(self, q: int) -> None:
        """Host bookkeeping of a replayed graph, whose captured ``append`` already moved the device lengths."""
        self.counts = [n + q for n in self.counts]

    def rows(self, sequence: int = 0, basis: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``[H, n, D]`` keys and values of one sequence; in the model's basis unless ``basis``."""
        n, h = self.counts[sequence], self.heads
        k = self.k[sequence * h : (sequence + 1) * h, :n]
        v = self.v[sequence * h : (sequence + 1) * h, :n]
        if basis:
            return k, v
        if self.key_rot is not None:
            k = (k.float() @ self.key_rot).to(self.dtype)
        if self.value_rot is not None:
            v = (v.float() @ self.value_rot).to(self.dtype)
        return k, v

    def flat(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Both buffers as ``[S * capacity, D]``, the layout of the kernels' tail table."""
        s = self.sequences * self.heads
        return self.k.view(s * self.capacity, self.dim), self.v.view(s * self.capacity, self.dim)

    def nbytes(self, sequence: int | None = None) -> int:
        """Bytes of the rows held (not the spare capacity), of one sequence or all."""
        n = sum(self.counts) if sequence is None else self.counts[sequence]
        return 2 * n * self.heads * self.dim * self.k.element_size()
