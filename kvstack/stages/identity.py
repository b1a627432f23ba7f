"""Stages that keep every token: the identity, and plain float casts (``fp16@layer0``)."""

from __future__ import annotations

import torch

from kvstack.kv import DenseRows, KVLayer
from kvstack.registry import Stage, StageContext, register


@register
class Identity(Stage, grammar="identity"):

    def apply_layer(self, index: int, layer: KVLayer, ctx: StageContext) -> KVLayer:
        return layer


class _Cast(Stage):
    """Store rows as plain floats of one dtype. In the quantize family, so ``fp16@layer0``
    exempts layer 0 from an unscoped quantizer rather than casting after it."""

    family = "quantize"
    dtype: torch.dtype = torch.float16

    def apply_layer(self, index: int, layer: KVLayer, ctx: StageContext) -> KVLayer:
        from dataclasses import replace

        return replace(
            layer,
            keys=DenseRows(layer.keys.decode().to(self.dtype)),
            values=DenseRows(layer.values.decode().to(self.dtype)),
        )


@register
class Fp16(_Cast, grammar="fp16"):
    dtype = torch.float16


@register
class Bf16(_Cast, grammar="bf16"):
    dtype = torch.bfloat16


@register
class Fp32(_Cast, grammar="fp32"):
    dtype = torch.float32
