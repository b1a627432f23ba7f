"""Quantization: fewer bits per kept element, with codes really packed in integer tensors."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import torch

from kvstack.errors import RecipeError
from kvstack.kv import KVLayer, tensor_nbytes
from kvstack.stack import Param, Stage, StageContext, register


@dataclass(frozen=True)
class Int8Rows:
    """Rows as symmetric INT8 codes with one fp16 scale per group of ``group`` channels of a token.

    Memory: ``n*d`` bytes of codes plus ``2*n*d/group`` bytes of scales; nothing else.
    Per-token grouping means rows can be dropped later (eviction during decoding) without
    requantizing.
    """

    codes: torch.Tensor  # int8 [n, d]
    scales: torch.Tensor  # float16 [n, d // group]
    group: int
    out_dtype: torch.dtype

    @classmethod
    def quantize(cls, rows: torch.Tensor, group: int) -> Int8Rows:
        n, d = rows.shape
        x = rows.float().reshape(n, d // group, group)
        scale16 = (x.abs().amax(dim=-1) / 127.0).to(torch.float16)
        s = scale16.float().unsqueeze(-1)
        codes = torch.where(s > 0, torch.round(x / torch.where(s > 0, s, 1.0)), 0.0)
        codes = codes.clamp_(-127, 127).to(torch.int8).reshape(n, d)
        return cls(codes=codes, scales=scale16, group=group, out_dtype=rows.dtype)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.codes.shape[0]), int(self.codes.shape[1]))

    @property
    def dtype(self) -> torch.dtype:
        return self.out_dtype

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.codes) + tensor_nbytes(self.scales)

    def decode(self) -> torch.Tensor:
        n, d = self.codes.shape
        x = self.codes.reshape(n, d // self.group, self.group).float() * self.scales.float().unsqueeze(-1)
        return x.reshape(n, d).to(self.out_dtype)

    def select(self, rows: torch.Tensor) -> Int8Rows:
        rows = rows.to(self.codes.device)
        return replace(self, codes=self.codes.index_select(0, rows), scales=self.scales.index_select(0, rows))


_GROUP = re.compile(r"^g(\d+)$")


@register
class Int8(Stage):
    name = "int8"
    summary = "round-to-nearest symmetric INT8 per token, one fp16 scale per group of channels"
    family = "quantize"
    params = (Param("group", int, 64, "channels sharing one scale (short form g64); capped at head_dim"),)

    @classmethod
    def shorthand(cls, token: str):
        m = _GROUP.match(token)
        return ("group", int(m.group(1))) if m else None

    def validate(self) -> None:
        if self.group <= 0:
            raise RecipeError(f"int8: group={self.group} must be a positive number of channels, e.g. g64")

    def _group_for(self, dim: int) -> int:
        g = min(self.group, dim)
        if dim % g:
            raise RecipeError(f"int8: group={self.group} does not divide head_dim={dim}; pick a divisor of {dim}")
        return g

    def apply_layer(self, index: int, layer: KVLayer, ctx: StageContext) -> KVLayer:
        k, v = layer.keys.decode(), layer.values.decode()
        return replace(
            layer,
            keys=Int8Rows.quantize(k, self._group_for(k.shape[1])),
            values=Int8Rows.quantize(v, self._group_for(v.shape[1])),
        )
