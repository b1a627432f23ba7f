"""Token selection: which (layer, head, token) entries to keep.

Selection stages only decide *which rows* survive; :meth:`KVLayer.select_rows` does the
mechanics, so kept positions stay exact and any row encoding works.

This module holds StreamingLLM. The score-and-keep methods, all written
``name:fraction[,options]`` with the common options ``sink``, ``alloc`` and ``beta``, live in

* :mod:`kvstack.stages.select.attention`: ``q2c``, ``snapkv``, ``tova``, ``expected``;
* :mod:`kvstack.stages.select.h2o`: ``h2o``;
* :mod:`kvstack.stages.select.keys`: ``knorm``, ``keydiff``, ``random``;

on top of :mod:`~kvstack.stages.select.base` (budgets, forced rows, eviction),
:mod:`~kvstack.stages.select.alloc` (uniform / PyramidKV / Ada-KV budgets) and
:mod:`~kvstack.stages.select.scores` (scoring helpers).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from kvstack.decode_policy import DecodePolicy, DecodeRows, register_decode_policy
from kvstack.kv import KVLayer
from kvstack.registry import Stage, StageContext, register

DECODE_BUDGET = "decode_budget"  # layer meta: (sink, window) kept while generating (streaming:decode=true)


def streaming_keep(positions: torch.Tensor, sink: int, window: int) -> torch.Tensor:
    """Indices (into ``positions``) of the sink tokens and the ``window`` most recent ones, in order."""
    order = torch.argsort(positions)
    recent = order[max(order.numel() - window, 0):] if window > 0 else order[:0]
    sinks = torch.nonzero(positions < sink).flatten()
    keep = torch.unique(torch.cat([sinks, recent]))
    return keep[torch.argsort(positions[keep])]


class StreamingBudget(DecodePolicy):
    """``streaming:decode=true`` while generating: per KV head, its sinks and the newest ``window``
    of its own rows (context segments and the shared tail of generated tokens) survive each step."""

    def __init__(self, budget: tuple[int, int]) -> None:
        self.sink, self.window = budget

    def evict(self, layer: DecodeRows) -> None:
        # The tail holds the newest tokens of every head, so its kept part is the same for all.
        seg_pos = [seg.row_positions() for seg in layer.segments]
        keeps = [torch.zeros(p.numel(), dtype=torch.bool) for p in seg_pos]
        tail_pos = layer.tail_pos.cpu()
        tail_keep = torch.zeros(tail_pos.numel(), dtype=torch.bool)
        for h in range(layer.base.num_heads):
            spans = [(si, off[h], seg.lengths[h]) for si, (seg, off) in
                     enumerate(zip(layer.segments, [s.head_offsets() for s in layer.segments]))]
            cand = torch.cat([seg_pos[si][o : o + n] for si, o, n in spans] + [tail_pos])
            chosen = torch.zeros(cand.numel(), dtype=torch.bool)
            chosen[streaming_keep(cand, self.sink, self.window)] = True
            at = 0
            for si, o, n in spans:
                keeps[si][o : o + n] = chosen[at : at + n]
                at += n
            tail_keep |= chosen[at:]
        layer.drop_rows(keeps, tail_keep)


register_decode_policy(DECODE_BUDGET, StreamingBudget)


@register
class StreamingLLM(Stage, grammar="streaming"):
    """StreamingLLM; parameters and checks: :mod:`kvstack.grammar.select`."""

    def budget_note(self, context_length: int) -> str | None:
        # A fixed-size cache larger than the context keeps all of it, as fixed-size caches do everywhere.
        if self.sink + self.window >= context_length:
            return (
                f"streaming keeps sink+window={self.sink + self.window} tokens and the context has "
                f"{context_length}: everything kept, nothing evicted"
            )
        return None

    def apply_layer(self, index: int, layer: KVLayer, ctx: StageContext) -> KVLayer:
        pos = layer.row_positions()
        offsets = layer.head_offsets()
        keep = [
            streaming_keep(pos[off : off + n], self.sink, self.window)
            for off, n in zip(offsets, layer.lengths, strict=True)
        ]
        out = layer.select_rows(keep)
        if self.decode:
            out = replace(out, meta={**out.meta, DECODE_BUDGET: (self.sink, self.window)})
        return out

