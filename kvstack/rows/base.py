"""What every row container is: the :class:`Encoded` protocol, and how its bytes are counted.

The bottom of the storage layer: it imports only torch, so the containers, the data model
(:mod:`kvstack.kv`), the wire format and the kernels can all build on it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Encoded(Protocol):
    """Rows of vectors ``[n_rows, dim]`` in some storage format.

    ``nbytes`` counts the bytes of every tensor the container really holds;
    ``decode`` returns the rows as floats of ``dtype``; ``select`` keeps a subset of rows.
    """

    @property
    def shape(self) -> tuple[int, int]: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def nbytes(self) -> int: ...

    def decode(self) -> torch.Tensor: ...

    def select(self, rows: torch.Tensor) -> Encoded: ...


def tensor_nbytes(t: torch.Tensor | None) -> int:
    """Bytes a tensor's elements occupy (what the allocator really holds for a contiguous tensor)."""
    return 0 if t is None else t.numel() * t.element_size()
