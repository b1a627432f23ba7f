"""GEAR (Kang et al., 2024): uniform quantization + sparse outliers + a low-rank fix of the error.

``gear:4`` / ``gear:2`` (``gear:3`` too), options ``rank`` (default 4) and ``outliers``
(default 0.01). For keys and values of one layer:

1. the ``outliers`` share of elements farthest from their group (see
   :mod:`kvstack.stages.quant.sparse`) goes to a sparse fp16 table and is replaced by its
   group's median before quantizing, so it does not stretch the range;
2. the rest is quantized like KIVI, with packed codes and fp16 scale + zero per group: keys per
   channel (``group`` tokens of one channel within a head), values per token (``group``
   channels, capped at head_dim);
3. the residual ``x - dequantized`` (zero at outliers) of each head gets its best rank-``rank``
   approximation (truncated SVD) stored as fp16 factors ``A [n_h, r]`` (one row per row) and
   ``B [d, r]`` (per head).

Decoding adds ``A B^T`` to the dequantized rows and writes the outliers over them. ``nbytes``
= codes + scales + zeros + outlier table + A + B. Rows evicted afterwards keep their rows of
``A``; per-channel key codes are requantized (one more rounding, see ``QuantRows.select``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from kvstack.grammar.params import token_axis_group
from kvstack.kv import KVLayer, tensor_nbytes
from kvstack.registry import Stage, StageContext, register
from kvstack.rows.groups import segment_ids
from kvstack.rows.quant import QuantRows
from kvstack.stages.common.heads import head_counts
from kvstack.stages.quant.sparse import SparseOutliers, outlier_scores


def _medians(x: torch.Tensor, segments: Sequence[int], axis: str) -> torch.Tensor:
    """Each element's group median, ``[n, d]`` (a head's channel for keys, a row for values)."""
    if axis == "token":
        return x.median(dim=1, keepdim=True).values.expand_as(x)
    parts = [p.median(dim=0, keepdim=True).values.expand_as(p) if p.shape[0] else p
             for p in torch.split(x, list(segments))]
    return torch.cat(parts) if parts else x


def residual_factors(residual: torch.Tensor, segments: Sequence[int], rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fp16 ``A [n, r]`` and ``B [H, d, r]``: each head's residual ~ ``A_h B_h^T`` (truncated SVD)."""
    d = residual.shape[1]
    a_parts, b_parts = [], []
    for part in torch.split(residual, list(segments)):
        r = min(rank, *part.shape) if part.shape[0] else 0
        u, s, vh = torch.linalg.svd(part, full_matrices=False)
        a = torch.zeros(part.shape[0], rank, dtype=part.dtype, device=part.device)
        b = torch.zeros(d, rank, dtype=part.dtype, device=part.device)
        a[:, :r], b[:, :r] = u[:, :r] * s[:r], vh[:r].mT
        a_parts.append(a)
        b_parts.append(b)
    return torch.cat(a_parts).to(torch.float16), torch.stack(b_parts).to(torch.float16)


@dataclass(frozen=True, eq=False)
class GearRows:
    """Quantized rows + per-head low-rank residual ``A B^T`` + exact outliers; see the module doc."""

    quant: QuantRows
    a: torch.Tensor  # float16 [n, r]
    b: torch.Tensor  # float16 [H, d, r]
    outliers: SparseOutliers
    segments: tuple[int, ...]

    @classmethod
    def encode(
        cls, rows: torch.Tensor, bits: int, group: int, axis: str, segments: Sequence[int], rank: int,
        outliers: float,
    ) -> GearRows:
        segments = tuple(int(s) for s in segments)
        x = rows.double() if rows.dtype == torch.float64 else rows.float()
        table = SparseOutliers.top(x, outlier_scores(x, segments, axis), outliers)
        mask = table.mask(x.shape[0])
        filled = torch.where(mask, _medians(x, segments, axis), x)
        quant = QuantRows.quantize(filled, bits, group, axis, False, segments, out_dtype=rows.dtype)
        residual = (x - quant.dequantize().to(x.dtype)).masked_fill(mask, 0.0)
        a, b = residual_factors(residual, segments, rank)
        return cls(quant, a, b, table, segments)

    @property
    def rank(self) -> int:
        return int(self.a.shape[1])

    # --- Encoded protocol ----------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return self.quant.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.quant.dtype

    @property
    def nbytes(self) -> int:
        return self.quant.nbytes + tensor_nbytes(self.a) + tensor_nbytes(self.b) + self.outliers.nbytes

    def dequantize(self) -> torch.Tensor:
        """float32 rows (float64 when the output dtype is float64)."""
        work = torch.float64 if self.dtype == torch.float64 else torch.float32
        x = self.quant.dequantize().to(work)
        if self.rank:
            b = self.b.to(work).index_select(0, segment_ids(self.segments, self.b.device))  # [n, d, r]
            x = x + torch.bmm(b, self.a.to(work).unsqueeze(-1)).squeeze(-1)
        return self.outliers.apply(x)

    def decode(self) -> torch.Tensor:
        return self.dequantize().to(self.dtype)

    def select(self, rows: torch.Tensor) -> GearRows:
        rows = rows.long().to(self.a.device)  # row tables are built on the host; the factors may be on a GPU
        return replace(
            self,
            quant=self.quant.select(rows),
            a=self.a.index_select(0, rows),
            outliers=self.outliers.select(rows, self.shape[0]),
            segments=head_counts(self.segments, rows),
        )


@register
class Gear(Stage, grammar="gear"):
    """GEAR; parameters and checks: :mod:`kvstack.grammar.quant`."""

    def apply_layer(self, index: int, layer: KVLayer, ctx: StageContext) -> KVLayer:
        keys, values = layer.keys.decode(), layer.values.decode()
        vgroup = token_axis_group(self.name, self.group, values.shape[1])
        return replace(
            layer,
            keys=GearRows.encode(keys, self.bits, self.group, "channel", layer.lengths, self.rank, self.outliers),
            values=GearRows.encode(values, self.bits, vgroup, "token", layer.lengths, self.rank, self.outliers),
        )
