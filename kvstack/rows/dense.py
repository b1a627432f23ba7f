"""Rows stored as plain floating point: the container every cache starts in, and its wire encoding."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvstack.rows.base import tensor_nbytes
from kvstack.rows.encoding import Parts, WireEncoding, need


@dataclass(frozen=True)
class DenseRows:
    """Rows stored as plain floating point, in the model's dtype."""

    data: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.data.shape[0]), int(self.data.shape[1]))

    @property
    def dtype(self) -> torch.dtype:
        return self.data.dtype

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.data)

    def decode(self) -> torch.Tensor:
        return self.data

    def select(self, rows: torch.Tensor) -> DenseRows:
        return DenseRows(self.data.index_select(0, rows.to(self.data.device)))


# --- wire encoding: the tensor itself ------------------------------------------------------------
def _parts(enc: DenseRows) -> Parts:
    return Parts(arrays={"data": enc.data})


def _build(meta: dict, arrays: dict, children: dict) -> DenseRows:
    data = arrays.get("data")
    need(data is not None and data.dim() == 2, "dense rows must be a 2-D tensor")
    need(data.dtype.is_floating_point, f"dense rows must be floating point, not {data.dtype}")
    return DenseRows(data)


WIRE = WireEncoding("dense", DenseRows, _parts, _build)
