"""KIVI (Liu et al., 2024): keys per-channel, values per-token, recent tokens in full precision.

Keys have outlier *channels*, so they are quantized along tokens (a group is ``group``
tokens of one channel within one head); values are quantized per token (a group is
``group`` channels, capped at head_dim). The ``residual`` most recent tokens of each head
(by original position) stay dense in the model's dtype. Both use asymmetric codes
(fp16 scale + fp16 zero per group) packed in ``uint8``; storage is
:class:`~kvstack.stages.quant_split.SplitRows`.

Differences from the reference implementation: exactly ``residual`` tokens stay dense
(KIVI keeps ``T mod residual`` keys dense so key groups are always full; here the oldest
key group of a head may be partial instead). Tokens generated after compression are
quantized by the HF cache in blocks of ``group`` tokens once more than ``residual + group``
are waiting (:class:`KiviBlocks`, the decode policy recorded as ``meta["decode_quantize"]``), so
the newest ``residual`` generated tokens stay dense; the context's own ``residual`` dense rows
stay dense too (up to 2*residual + group dense rows in all, where KIVI has residual + group).
"""

from __future__ import annotations

import functools
from dataclasses import replace

import torch

from kvstack.decode_policy import DecodePolicy, DecodeRows, register_decode_policy
from kvstack.grammar.params import token_axis_group
from kvstack.kv import KVLayer
from kvstack.registry import Stage, StageContext, build_stage, register
from kvstack.rows.groups import segment_ids
from kvstack.rows.quant import QuantRows
from kvstack.rows.split import SplitRows

DECODE_QUANTIZE = "decode_quantize"  # layer meta: (block stage spec, residual, block) for generated tokens



@functools.lru_cache(maxsize=32)
def _block_stage(spec: str) -> Stage:
    return build_stage(spec)


class KiviBlocks(DecodePolicy):
    """KIVI while generating: once the tail holds ``residual + block`` tokens, its oldest ``block``
    are quantized by the stage ``spec`` into a new segment, so long generations stay compressed."""

    def __init__(self, rule: tuple[str, int, int]) -> None:
        self.spec, self.residual, self.block = rule

    def compress(self, layer: DecodeRows) -> None:
        while layer.tail_length and layer.tail_length >= self.residual + self.block:
            keys, values, positions = layer.take_tail(self.block)
            dense = KVLayer.from_dense(keys, values, positions, layer.window)
            layer.segments.append(replace(_block_stage(self.spec).apply_layer(-1, dense, None), meta={}))


register_decode_policy(DECODE_QUANTIZE, KiviBlocks)

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
class Kivi(Stage, grammar="kivi"):
    """KIVI; parameters and checks: :mod:`kvstack.grammar.quant`."""

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
            meta={**layer.meta, DECODE_QUANTIZE: (block_spec, self.residual, self.group)},
        )
