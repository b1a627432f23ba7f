"""Quantization stages: fewer bits per kept element, with codes really packed in ``uint8``.

``int8`` / ``int4`` / ``int3`` / ``int2`` are uniform round-to-nearest quantizers stored as
:class:`~kvstack.stages.quant_rows.QuantRows` (packed codes + fp16 scales, + fp16 zeros
when asymmetric). Parameters, in positional order:

* ``group`` (``g64``; default 64): elements sharing one scale. ``axis=token``: channels
  of one token, capped at head_dim and required to divide it (a RecipeError lists the
  divisors; nothing is padded). ``axis=channel``: tokens of one channel within one head;
  each head's last group may be shorter.
* ``axis`` (``token`` | ``channel``; default token, channel for int4): per-token or per-channel (KIVI keys).
* ``sym`` (``sym`` / ``asym``): symmetric scale only, or scale + zero. Default symmetric
  for int8 (same bytes as before: int8 codes + fp16 scales) and asymmetric below 8 bits.
* ``rot`` / ``norot`` (off by default, on for int4) and ``seed``: rotate every row by a fixed Walsh-Hadamard
  x random-sign matrix before quantizing (:mod:`kvstack.stages.quant_rotate`; same bytes).
* ``sink`` (default 0): the first ``sink`` tokens stay in fp16 (attention sinks), as KVQuant keeps them.
* ``clip`` (default 1: none): clamp each group to this fraction of its range first (``int2:rot,clip=0.75``).

Channel-axis rows are requantized when tokens are evicted afterwards (see
``QuantRows.select``). After a low-rank stage (``svd:rank=16 > int4``) the stage quantizes
the coefficients, not the reconstruction (:func:`~kvstack.stages.common.inner.quantize_encoded`).
``int4``'s defaults differ (``axis=channel``, ``rot``): measured on real models, it is the
layout that keeps multi-key retrieval; ``int4:token,norot`` is the per-token layout the fast
decode kernel reads. ``kivi:2`` / ``kivi:4`` live in :mod:`kvstack.stages.quant.kivi`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

import torch

from kvstack.errors import RecipeError
from kvstack.grammar.params import AUTO, token_axis_group
from kvstack.grammar.quant import value_axis
from kvstack.kv import KVLayer
from kvstack.registry import Stage, StageContext, register
from kvstack.rows.quant import QuantRows
from kvstack.rows.rotate import HadamardRows, check_width, clip_groups, rotate
from kvstack.stages.common.inner import quantize_encoded
from kvstack.stages.quant.sink import keep_sink


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


class UniformQuant(Stage):
    """Round-to-nearest ``bits``-bit quantization of keys and values with the same settings."""

    family = "quantize"
    bits: ClassVar[int] = 8

    @property
    def value_axis(self) -> str:
        return value_axis(self)

    @property
    def value_bits(self) -> int:
        return self.vbits or self.bits

    def quantize(self, rows: torch.Tensor, lengths: tuple[int, ...], coefficients: bool = False,
                 axis: str | None = None, bits: int | None = None) -> QuantRows | HadamardRows:
        """Quantize one layer's keys or values (``lengths``: rows per head) along ``axis`` to ``bits`` (default:
        the keys' settings), rotated first with ``rot`` (``auto``: when the width is a power of two and the rows
        are not low-rank ``coefficients``)."""
        axis, bits = axis or self.axis, bits or self.bits
        if not self.rot or (self.rot == AUTO and (coefficients or not _power_of_two(rows.shape[1]))):
            return self._quantize(rows, lengths, axis, bits)
        check_width(rows.shape[1], "row width (head_dim, or the rank after a low-rank stage)")
        return HadamardRows(self._quantize(rotate(rows, self.seed), lengths, axis, bits), self.seed, rows.dtype)

    def _quantize(self, rows: torch.Tensor, lengths: tuple[int, ...], axis: str, bits: int) -> QuantRows:
        if axis == "token":
            group = token_axis_group(self.name, self.group, rows.shape[1])
            return QuantRows.quantize(clip_groups(rows, group, "token", None, self.clip), bits, group, "token",
                                      self.sym)
        rows = clip_groups(rows, self.group, "channel", lengths, self.clip)
        return QuantRows.quantize(rows, bits, self.group, "channel", self.sym, segments=lengths)

    def apply_layer(self, index: int, layer: KVLayer, ctx: StageContext) -> KVLayer:
        # after a low-rank stage, the coefficients (r per row) are quantized, not the reconstruction (d per row)
        if self.sink and not getattr(layer.keys, "has_inner_rows", False):
            def encoder(axis: str, bits: int):
                return lambda rows, _pos, lengths: self.quantize(rows, lengths, axis=axis, bits=bits)

            keys = keep_sink(layer.keys.decode(), layer, self.sink, encoder(self.axis, self.bits))
            values = keep_sink(layer.values.decode(), layer, self.sink, encoder(self.value_axis, self.value_bits))
            return replace(layer, keys=keys, values=values)
        if self.sink:
            raise RecipeError(f"{self.name}: sink={self.sink} applies to token rows, not to low-rank coefficients")
        keys = self._encode(layer.keys, layer.lengths, self.axis, self.bits)
        values = self._encode(layer.values, layer.lengths, self.value_axis, self.value_bits)
        return replace(layer, keys=keys, values=values)

    def _encode(self, rows, lengths: tuple[int, ...], axis: str, bits: int):
        coefficients = bool(getattr(rows, "has_inner_rows", False))
        return quantize_encoded(rows, lengths, lambda r, n: self.quantize(r, n, coefficients, axis, bits))


@register
class Int8(UniformQuant, grammar="int8"):
    bits = 8


@register
class Int4(UniformQuant, grammar="int4"):
    bits = 4  # defaults (channel groups, rot=auto): see kvstack/grammar/quant.py


@register
class Int3(UniformQuant, grammar="int3"):
    bits = 3


@register
class Int2(UniformQuant, grammar="int2"):
    bits = 2
