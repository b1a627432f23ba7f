"""Coupled quantization (Zhang et al., 2024, "KV Cache is 1 Bit Per Channel"): ``cq:1`` / ``cq:2``.

Channels are not independent: quantizing ``c`` contiguous channels *jointly*, as one point in
``c`` dimensions, with a codebook of ``2**(bits*c)`` centroids learned by k-means, spends the
same ``bits`` per channel but captures their joint distribution. ``cq:1`` (``channels=4``):
16 centroids per group of 4 channels, a 4-bit code per group, 1 bit per channel;
``cq:2``: 256 centroids, an 8-bit code per group. Codebooks are per layer, KV head and channel
group (``float16 [H, d/c, 2**(bits*c), c]``), for keys (as cached, after RoPE) and values.

``calibration=FILE`` (``kvstack calibrate --codebooks``) gives codebooks learned on calibration
text, shared by every cache of the model and not counted; without it they are fitted on the
cache and counted (at 4k tokens a 2-bit codebook costs about half as much as the codes:
calibrate). The first ``sink`` tokens stay in fp16 (a kvstack addition, as for kvquant;
``sink=0`` quantizes every token). The k-means is unweighted (the paper weights by Fisher
information), and generated tokens stay dense.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from kvstack.errors import InputError, RecipeError
from kvstack.kv import KVLayer, tensor_nbytes
from kvstack.registry import StageContext, register
from kvstack.rows.groups import segment_ids
from kvstack.rows.pack import SUPPORTED_BITS, pack_codes, unpack_codes
from kvstack.stages.common.heads import head_counts
from kvstack.stages.quant.calibration import CalibratedStage, cq_key
from kvstack.stages.quant.codebook import fit_centroids, nearest_centroid
from kvstack.stages.quant.nuq import CodeRows
from kvstack.stages.quant.sink import keep_sink


@dataclass(frozen=True, eq=False)
class CQRows(CodeRows):
    """Rows as one packed centroid index per ``channels``-channel group; see the module doc."""

    codes: torch.Tensor  # uint8 [n, packed_width(d / channels, code_bits)]
    codebook: torch.Tensor  # float16 [H, d / channels, 2**code_bits, channels]
    owns_codebook: bool
    code_bits: int
    dim: int
    segments: tuple[int, ...]
    out_dtype: torch.dtype

    @property
    def channels(self) -> int:
        return int(self.codebook.shape[-1])

    @classmethod
    def quantize(
        cls, rows: torch.Tensor, bits: int, channels: int, segments: Sequence[int],
        codebook: torch.Tensor | None = None, out_dtype: torch.dtype | None = None,
    ) -> CQRows:
        """Quantize ``[n, d]`` rows; ``codebook=None`` fits one per head and group on the rows (then counted)."""
        segments = tuple(int(s) for s in segments)
        n, d = rows.shape
        if d % channels or sum(segments) != n or bits * channels not in SUPPORTED_BITS:
            raise InputError(
                f"{n} rows of {d} channels: need channels | {d}, segments {segments} summing to {n} and "
                f"bits * channels in {SUPPORTED_BITS} (got {bits} x {channels})"
            )
        g, k = d // channels, 1 << (bits * channels)
        x = rows.float()
        books, codes = [], torch.empty(n, g, dtype=torch.uint8, device=rows.device)
        start = 0
        for h, m in enumerate(segments):
            points = x[start : start + m].view(m, g, channels).transpose(0, 1)  # [g, m, c]
            if codebook is None:
                book = (fit_centroids(points, k) if m else torch.zeros(g, k, channels)).to(torch.float16)
            else:
                book = codebook[h].to(torch.float16)
            book = book.to(rows.device)
            books.append(book)
            codes[start : start + m] = nearest_centroid(points, book.float()).T.to(torch.uint8)
            start += m
        book = torch.stack(books) if books else torch.zeros(0, g, k, channels, dtype=torch.float16, device=rows.device)
        return cls(pack_codes(codes, bits * channels), book, codebook is None, bits * channels, d, segments,
                   out_dtype or rows.dtype)

    # --- Encoded protocol (shape, dtype: CodeRows) ------------------------------------
    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.codes) + (tensor_nbytes(self.codebook) if self.owns_codebook else 0)

    def decode(self) -> torch.Tensor:
        h, g, k, c = self.codebook.shape
        q = unpack_codes(self.codes, self.code_bits, g).long()  # [n, g]
        heads = segment_ids(self.segments, q.device)
        flat = (heads[:, None] * g + torch.arange(g, device=q.device)[None, :]) * k + q
        return self.codebook.reshape(h * g * k, c)[flat].reshape(-1, self.dim).to(self.out_dtype)

    def select(self, rows: torch.Tensor) -> CQRows:
        rows = rows.long()
        return replace(self, codes=self.codes.index_select(0, rows), segments=head_counts(self.segments, rows))


@register
class Cq(CalibratedStage, grammar="cq"):
    """Coupled quantization; parameters and checks: :mod:`kvstack.grammar.quant`."""

    bits: int
    channels: int
    sink: int

    def apply_layer(self, index: int, layer: KVLayer, ctx: StageContext) -> KVLayer:
        d = layer.keys.shape[1]
        if d % self.channels:
            raise RecipeError(f"{self.spec()}: channels={self.channels} does not divide head_dim={d}")
        shape = (layer.num_heads, d // self.channels, 1 << (self.bits * self.channels), self.channels)

        def encoder(part: str):
            book = self.calibrated(cq_key(self.bits, self.channels, part, index), shape)

            def encode(rows: torch.Tensor, pos: torch.Tensor, segments: tuple[int, ...]) -> CQRows:
                return CQRows.quantize(rows, self.bits, self.channels, segments, book)

            return encode

        try:
            keys = keep_sink(layer.keys.decode(), layer, self.sink, encoder("k"))
            values = keep_sink(layer.values.decode(), layer, self.sink, encoder("v"))
        except ValueError as exc:  # non-finite rows cannot be assigned to a centroid
            raise InputError(f"{self.spec()}: layer {index}: {exc}") from exc
        return replace(layer, keys=keys, values=values, meta={**layer.meta, "codebook": self.codebook_note()})
