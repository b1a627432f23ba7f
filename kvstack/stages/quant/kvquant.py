"""KVQuant-style quantization (Hooper et al., 2024): ``kvquant:3`` / ``kvquant:4`` (and ``kvquant:2``).

* keys quantized **before RoPE**, per channel (one zero/scale per channel of each head): the
  cache stores pre-RoPE codes and rotates the decoded keys to their positions when read
  (:class:`~kvstack.stages.quant.rope.RotatedRows`); ``rope=post`` quantizes keys as cached;
* values quantized per token;
* non-uniform levels: each head has a codebook of ``2**bits`` levels fitted by k-means on
  normalized values (:mod:`kvstack.stages.quant.nuq`), from ``calibration=FILE`` (``kvstack
  calibrate --codebooks``; not counted, like a calibrated basis) or, without one, fitted on
  the cache itself and counted (``layer.meta["codebook"]`` says which);
* dense-and-sparse: the ``outliers`` share (default 1%) of elements farthest from their group
  is kept exactly (fp16) in a sparse table with int32 indices;
* the first ``sink`` tokens (default 1, the attention sink) kept in fp16.

``nbytes`` = packed codes + fp16 zero/scale + outlier table + sink rows (+ codebooks when fitted
here, + int32 positions of pre-RoPE keys when tokens were evicted first). Differences from
the paper: the k-means is unweighted (KVQuant weights by Fisher information, which needs
gradients), key scales are computed on the cache rather than calibrated offline, outliers are
chosen per layer rather than by per-vector thresholds, and tokens generated after compression
stay dense (KVQuant quantizes them online).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from kvstack.errors import RecipeError
from kvstack.kv import KVLayer
from kvstack.registry import StageContext, register
from kvstack.stages.common.rope import NEED_ROPE, Rotary
from kvstack.stages.quant.calibration import CalibratedStage, kvquant_key
from kvstack.stages.quant.nuq import NuqRows
from kvstack.stages.quant.rope import RotatedRows
from kvstack.stages.quant.sink import keep_sink


def rotary_of(stage: str, index: int, ctx: StageContext) -> Rotary:
    tables = ctx.captures.get(NEED_ROPE)
    if not tables or index not in tables:
        raise RecipeError(
            f"{stage} quantizes keys before RoPE and needs the model's rotary tables in ctx.captures['rope'], "
            "which this driver did not provide; use kvstack.compress (it captures them), or rope=post"
        )
    return tables[index]


@register
class KVQuant(CalibratedStage, grammar="kvquant"):
    """KVQuant; parameters and checks: :mod:`kvstack.grammar.quant`."""

    bits: int
    outliers: float
    sink: int
    rope: str

    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset({NEED_ROPE}) if self.rope == "pre" else frozenset()

    def apply_layer(self, index: int, layer: KVLayer, ctx: StageContext) -> KVLayer:
        shape = (layer.num_heads, 1 << self.bits)
        kpart = "kpre" if self.rope == "pre" else "k"
        kbook = self.calibrated(kvquant_key(self.bits, kpart, index), shape)
        vbook = self.calibrated(kvquant_key(self.bits, "v", index), shape)
        rotary = rotary_of(self.spec(), index, ctx) if self.rope == "pre" else None

        def keys(rows: torch.Tensor, pos: torch.Tensor, segments: tuple[int, ...]):
            def nuq(x: torch.Tensor) -> NuqRows:
                return NuqRows.quantize(x, self.bits, "channel", segments, self.outliers, kbook, out_dtype=x.dtype)

            return nuq(rows) if rotary is None else RotatedRows.encode(rows, pos, segments, rotary, nuq)

        def values(rows: torch.Tensor, pos: torch.Tensor, segments: tuple[int, ...]) -> NuqRows:
            return NuqRows.quantize(rows, self.bits, "token", segments, self.outliers, vbook)

        return replace(
            layer,
            keys=keep_sink(layer.keys.decode(), layer, self.sink, keys),
            values=keep_sink(layer.values.decode(), layer, self.sink, values),
            meta={**layer.meta, "codebook": self.codebook_note()},
        )
