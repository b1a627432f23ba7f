"""Quantization stages: fewer bits per kept element, with codes really packed in ``uint8``.

``int8`` / ``int4`` / ``int3`` / ``int2`` are uniform round-to-nearest quantizers stored as
:class:`~kvstack.rows.quant.QuantRows` (packed codes + fp16 scales, + fp16 zeros
when asymmetric). Parameters, in positional order:

* ``group`` (``g64``; default 64): elements sharing one scale. ``axis=token``: channels
  of one token, capped at head_dim and required to divide it (a RecipeError lists the
  divisors; nothing is padded). ``axis=channel``: tokens of one channel within one head;
  each head's last group may be shorter.
* ``axis`` (``token`` | ``channel``; default token, channel for int4): per-token or per-channel (KIVI keys).
* ``sym`` (``sym`` / ``asym``): symmetric scale only, or scale + zero. Default symmetric
  for int8 (same bytes as before: int8 codes + fp16 scales) and asymmetric below 8 bits.
* ``rot`` / ``norot`` (off by default, on for int4) and ``seed``: rotate every row by a fixed Walsh-Hadamard
  x random-sign matrix before quantizing (:mod:`kvstack.rows.rotate`; same bytes).
* ``sink`` (default 0): the first ``sink`` tokens stay in fp16 (attention sinks), as KVQuant keeps them.
* ``clip`` (default 1: none): clamp each group to this fraction of its range first (``int2:rot,clip=0.75``).

Channel-axis rows are requantized when tokens are evicted afterwards (see
``QuantRows.select``). After a low-rank stage (``svd:rank=16 > int4``) the stage quantizes
the coefficients, not the reconstruction (:func:`~kvstack.stages.lowrank_rows.quantize_encoded`).
``int4``'s defaults differ (``axis=channel``, ``rot``): measured on real models, it is the
layout that keeps multi-key retrieval; ``int4:token,norot`` is the per-token layout the fast
decode kernel reads. ``kivi:2`` / ``kivi:4`` live in :mod:`kvstack.stages.quant_kivi`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import torch

from kvstack.errors import RecipeError
from kvstack.kv import KVLayer
from kvstack.rows.quant import AXES, SUPPORTED_BITS, QuantRows, check_settings
from kvstack.rows.rotate import HadamardRows, check_width, clip_groups, rotate
from kvstack.stack import Param, Stage, StageContext, as_bool, register
from kvstack.stages.lowrank_rows import quantize_encoded
from kvstack.stages.quant_kvquant import check_sink
from kvstack.stages.quant_params import group_shorthand, parse_axis, token_axis_group
from kvstack.stages.quant_sink import keep_sink

_SHORT = {
    "sym": ("sym", True),
    "asym": ("sym", False),
    "token": ("axis", "token"),
    "channel": ("axis", "channel"),
    "rot": ("rot", True),
    "norot": ("rot", False),
}


def parse_rot(raw: str) -> bool | str:
    """``true``/``false`` as :func:`as_bool`, or ``auto``: rotate rows whose width is a power of two."""
    return AUTO if raw.strip().lower() == AUTO else as_bool(raw)


parse_rot.__name__ = "boolean (true/false) or auto"
AUTO = "auto"
SAME = "same"


def parse_vaxis(raw: str) -> str:
    """``same`` (the values follow ``axis``) or an axis of their own."""
    return SAME if raw.strip().lower() == SAME else parse_axis(raw)


parse_vaxis.__name__ = "same, token or channel"


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _params(sym: bool, axis: str = "token", rot: bool | str = False) -> tuple[Param, ...]:
    return (
        Param("group", int, 64, "elements per scale (g64): channels of a token, or tokens of a channel"),
        Param("axis", parse_axis, axis, "token: groups along a token; channel: along a channel"),
        Param("sym", as_bool, sym, "symmetric (sym: scale only) or asymmetric (asym: scale + zero)"),
        Param("rot", parse_rot, rot, "rot / norot: Walsh-Hadamard rotation before quantizing (power-of-two head_dim; "
              "auto: head_dim rows when it is a power of two, never low-rank coefficients)"),
        Param("seed", int, 0, "seed of the rotation's random signs (rot only)"),
        Param("clip", float, 1.0, "keep this fraction of each group's [min, max] around its middle (0 < clip <= 1)"),
        Param("sink", int, 0, "first tokens kept in fp16 (attention sinks; 0 quantizes every token)"),
        Param("vaxis", parse_vaxis, SAME, "values' axis: same (as axis) | token | channel (KIVI: keys channel, "
              "values token)"),
        Param("vbits", int, 0, "values' bit width: 8, 4, 3 or 2 (0: the stage's own; keys steer retrieval, "
              "values only average)"),
    )


class UniformQuant(Stage):
    """Round-to-nearest ``bits``-bit quantization of keys and values with the same settings."""

    family = "quantize"
    bits: ClassVar[int] = 8

    @classmethod
    def shorthand(cls, token: str) -> tuple[str, Any] | None:
        return _SHORT.get(token.strip().lower()) or group_shorthand(token)

    def validate(self) -> None:
        if self.axis not in AXES:
            raise RecipeError(f"{self.name}: axis={self.axis!r} is not one of {', '.join(AXES)}")
        if not isinstance(self.sym, bool):
            raise RecipeError(f"{self.name}: sym={self.sym!r} must be True (sym) or False (asym)")
        if self.rot not in (True, False, AUTO) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise RecipeError(f"{self.name}: rot={self.rot!r} must be True/False and seed={self.seed!r} an int >= 0")
        if not isinstance(self.clip, float | int) or not 0 < self.clip <= 1:
            raise RecipeError(f"{self.name}: clip={self.clip!r} must be in (0, 1]: the share of a group's range kept")
        check_sink(self.name, self.sink)
        if self.vaxis != SAME and self.vaxis not in AXES:
            raise RecipeError(f"{self.name}: vaxis={self.vaxis!r} is not one of same, {', '.join(AXES)}")
        if self.vbits not in (0, *SUPPORTED_BITS) or isinstance(self.vbits, bool):
            raise RecipeError(f"{self.name}: vbits={self.vbits!r} must be 8, 4, 3 or 2 (0: the stage's own)")
        try:
            check_settings(self.bits, self.group, self.axis)
            check_settings(self.value_bits, self.group, self.value_axis)
        except RecipeError as exc:
            raise RecipeError(f"{self.name}: {exc}") from None

    @property
    def value_axis(self) -> str:
        return self.axis if self.vaxis == SAME else self.vaxis

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
class Int8(UniformQuant):
    name = "int8"
    summary = "round-to-nearest INT8 (symmetric per token by default), fp16 scale per group"
    bits = 8
    params = _params(sym=True)


@register
class Int4(UniformQuant):
    name = "int4"
    summary = "round-to-nearest INT4, two codes per byte, fp16 scale + zero per group (default: channel groups, rot)"
    bits = 4
    # Default layout chosen on real models (RULER, SmolLM2-135M, n=40 held out): rotated rows in
    # groups of 64 tokens per channel keep the full cache's multi-key accuracy where per-token
    # groups lose a fifth of it (benchmarks/RESULTS.md). `int4:token,norot` is the old layout.
    params = _params(sym=False, axis="channel", rot=AUTO)


@register
class Int3(UniformQuant):
    name = "int3"
    summary = "round-to-nearest INT3, eight codes in three bytes, fp16 scale + zero per group"
    bits = 3
    params = _params(sym=False)


@register
class Int2(UniformQuant):
    name = "int2"
    summary = "round-to-nearest INT2, four codes per byte, fp16 scale + zero per group"
    bits = 2
    params = _params(sym=False)
