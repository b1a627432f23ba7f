"""KIVI (Liu et al., 2024): keys per-channel, values per-token, recent tokens in full precision.

Keys have outlier *channels*, so they are quantized along tokens (a group is ``group``
tokens of one channel within one head); values are quantized per token (a group is
``group`` channels, capped at head_dim). The ``residual`` most recent tokens of each head
(by original position) stay dense in the model's dtype. Both use asymmetric codes
(fp16 scale + fp16 zero per group) packed in ``uint8``; storage is
:class:`~kvstack.rows.split.SplitRows`.

Differences from the reference implementation: exactly ``residual`` tokens stay dense
(KIVI keeps ``T mod residual`` keys dense so key groups are always full; here the oldest
key group of a head may be partial instead). Tokens generated after compression are
quantized by the HF cache in blocks of ``group`` tokens once more than ``residual + group``
are waiting (``meta["decode_quantize"]``), so the newest ``residual`` generated tokens stay
dense; the context's own ``residual`` dense rows stay dense too (up to 2*residual + group
dense rows in all, where KIVI has residual + group).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from kvstack.errors import RecipeError
from kvstack.kv import KVLayer
from kvstack.rows.groups import segment_ids
from kvstack.rows.quant import QuantRows
from kvstack.rows.split import SplitRows
from kvstack.stack import Param, Stage, StageContext, register
from kvstack.stages.quant_params import group_shorthand, token_axis_group

KIVI_BITS = (2, 4)


def recent_mask(layer: KVLayer, residual: int) -> torch.Tensor:
    """``[sum(lengths)]`` bool: the ``residual`` rows of each head with the latest positions."""
    pos = layer.row_positions()
    mask = torch.zeros(pos.numel(), dtype=torch.bool)
    for off, n in zip(layer.head_offsets(), layer.lengths, strict=True):
        r = min(residual, n)
        if r:
            mask[off + torch.topk(pos[off : off + n], r).indices] = True
    return mask


@register
class Kivi(Stage):
    name = "kivi"
    summary = "KIVI: keys per-channel, values per-token (2 or 4 bits), last `residual` tokens dense"
    family = "quantize"
    params = (
        Param("bits", int, 2, f"bits per code: {' or '.join(map(str, KIVI_BITS))}"),
        Param("group", int, 32, "tokens per key group, channels per value group (g32)"),
        Param("residual", int, 128, "most recent tokens of each head kept in full precision"),
        Param("sink", int, 0, "first tokens kept in full precision too (attention sinks; 0: none, as in KIVI)"),
    )

    @classmethod
    def shorthand(cls, token: str) -> tuple[str, Any] | None:
        return group_shorthand(token)

    def validate(self) -> None:
        if self.bits not in KIVI_BITS:
            raise RecipeError(
                f"kivi:{self.bits} does not exist; KIVI bit widths: {', '.join(map(str, KIVI_BITS))} "
                "(for other widths use int8/int4/int3/int2 with axis=channel)"
            )
        if not isinstance(self.group, int) or self.group <= 0:
            raise RecipeError(f"kivi: group={self.group!r} must be a positive number of elements, e.g. g32")
        if not isinstance(self.residual, int) or self.residual < 0:
            raise RecipeError(
                f"kivi: residual={self.residual!r} must be >= 0 tokens (0 quantizes everything)"
            )

        if not isinstance(self.sink, int) or self.sink < 0:
            raise RecipeError(f"kivi: sink={self.sink!r} must be >= 0 tokens kept dense (0: none)")

    def budget_note(self, context_length: int) -> str | None:
        if self.residual >= context_length:
            return (
                f"kivi keeps the last residual={self.residual} tokens dense and the context has "
                f"{context_length}: nothing quantized"
            )
        return None

    def apply_layer(self, index: int, layer: KVLayer, ctx: StageContext) -> KVLayer:
        keys, values = layer.keys.decode(), layer.values.decode()
        dense = recent_mask(layer, self.residual) | (layer.row_positions() < self.sink)
        heads = segment_ids(layer.lengths)
        vgroup = token_axis_group(self.name, self.group, values.shape[1])

        def quant_keys(rows: torch.Tensor, per_head) -> QuantRows:
            return QuantRows.quantize(rows, self.bits, self.group, "channel", False, segments=per_head)

        def quant_values(rows: torch.Tensor, per_head) -> QuantRows:
            return QuantRows.quantize(rows, self.bits, vgroup, "token", False)

        block_spec = f"kivi:{self.bits},group={self.group},residual=0"
        return replace(
            layer,
            keys=SplitRows.build(keys, dense, heads, quant_keys),
            values=SplitRows.build(values, dense, heads, quant_values),
            meta={**layer.meta, "decode_quantize": (block_spec, self.residual, self.group)},
        )
