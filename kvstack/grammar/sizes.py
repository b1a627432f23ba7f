"""Each stage's effect on the size of one layer's cache, from its parameters alone (no model, no data).

A stage's ``size`` turns its bound parameter values into a :class:`Size`: a token rule (keep a
share of each head's tokens, or cap them), a storage model (how the kept rows are encoded, see
:mod:`kvstack.grammar.storage`), and how kvstack tags the positions of kept tokens. The planner
(``kvstack.plan.recipe_factor``) applies them layer by layer. A stage whose bytes depend on the
data (FastGen's per-head policies, MiniCache's merged share, a rank picked by ``energy=``) says
so with ``exact=False`` and ``bound``: its estimate is then an upper bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from kvstack.grammar.precision import SCALE_BITS, ZERO_BITS, Precision
from kvstack.grammar.storage import Codebook, Gear, Joint, Kivi, LowRank, WithSink

POSITIONS_NONE, POSITIONS_LAYER, POSITIONS_HEAD = 0, 1, 2
POSITION_BITS = 32  # kvstack tags each kept row with its original position (int32)
CAST_BITS = {"fp16": 16, "bf16": 16, "fp32": 32}
INT_BITS = {"int8": 8, "int4": 4, "int3": 3, "int2": 2}


@dataclass(frozen=True)
class Size:
    """One stage's effect on a layer: a token rule and/or a storage model.

    ``coefficients``: a uniform quantizer after ``svd`` quantizes its coefficients instead of
    replacing its storage. ``evicts``: counted as evicting (position tags) even when it may keep
    every token - part of an upper bound."""

    what: str
    keep: float | None = None  # selection: share of each head's tokens kept
    budget: int | None = None  # streaming: sink + window
    storage: Any = None  # a Precision or a model from kvstack.grammar.storage
    positions: int = POSITIONS_NONE
    evicts: bool = False
    prefix: int | None = None  # selection: the first positions kept, and none after them but a window
    sure: int = 0  # selection: the first positions surely kept in every head (its sink)
    contiguous: bool = False  # selection: past the prefix, each head keeps one run of positions
    exact: bool = True
    bound: str = ""  # for exact=False: what the estimate is
    coefficients: bool = False


def head_tokens(keep: float, tokens: int) -> int:
    """Rows a head of ``tokens`` keeps under ``keep``: round half up, at least 1 (``select.alloc.head_request``)."""
    return max(1, int(keep * tokens + 0.5)) if tokens else 0


def unchanged(s: Any) -> Size:
    return Size("no change in size")


def cast(s: Any) -> Size:
    bits = CAST_BITS[s.name]
    return Size(f"stores {s.name} ({bits} bits/element)", storage=Precision(s.name, Fraction(bits)))


def keep_fraction(s: Any) -> Size:
    what = (f"keeps {s.fraction:.4g} of each head's tokens (rounded half up, at least 1; "
            "+ an int32 position tag per kept token per KV head)")
    if s.alloc != "uniform":
        return Size(what, keep=s.fraction, positions=POSITIONS_HEAD, sure=s.sink, exact=False,
                    bound=f"alloc={s.alloc} spreads the same share unevenly; each layer is shown at the uniform split")
    return Size(what, keep=s.fraction, positions=POSITIONS_HEAD, sure=s.sink)


def streaming(s: Any) -> Size:
    cap = s.window + s.sink
    return Size(f"keeps at most sink+window = {cap:,} tokens (+ one int32 position tag per kept token)",
                budget=cap, positions=POSITIONS_LAYER, prefix=s.sink, sure=s.sink, contiguous=True)


def fastgen(s: Any) -> Size:
    return Size("keeps, per KV head, the cheapest policy that recovers the attention share (+ int32 position tags)",
                positions=POSITIONS_HEAD, evicts=True, sure=s.sink, exact=False,
                bound="depends on each head's attention: at most every token, with position tags")


def _bits_text(storage: Any) -> str:
    if isinstance(storage, Precision) and storage.group_size:
        extra = Fraction(storage.group_overhead_bits, storage.group_size)
        return f"{float(storage.bits + extra):.4g} bits/element incl. scales"
    if isinstance(storage, Precision):
        return f"{float(storage.bits):.4g} bits/element"
    return "see the layer table"


def uniform(s: Any) -> Size:
    bits = INT_BITS[s.name]
    overhead = SCALE_BITS if s.sym else SCALE_BITS + ZERO_BITS
    vaxis = None if s.vaxis == "same" else s.vaxis
    # vbits: keys and values hold half the elements each, so the mean width is exact
    precision = Precision(s.name, Fraction(bits + (s.vbits or bits), 2), s.group, overhead, s.axis, tile=True,
                          value_axis=vaxis)
    what = f"stores {precision.label} ({_bits_text(precision)})"
    if s.sink:
        return Size(what + f"; the first {s.sink} tokens in fp16", storage=WithSink(precision, s.sink, fp16=True),
                    coefficients=True)
    return Size(what, storage=precision, coefficients=True)


def kivi(s: Any) -> Size:
    precision = Precision(f"kivi{s.bits}", Fraction(s.bits), s.group, SCALE_BITS + ZERO_BITS, "kivi", tile=True)
    storage = Kivi(precision, s.residual, s.sink)
    what = f"stores {precision.label} ({_bits_text(precision)}); the last {s.residual} tokens stay in the cache dtype"
    if s.sink:
        what += f", and the first {s.sink}"
    return Size(what, storage=storage)


def gear(s: Any) -> Size:
    storage = Gear(s.bits, s.rank, s.outliers, s.group)
    return Size(f"stores {storage.label}", storage=storage)


def kvquant(s: Any) -> Size:
    inner = Codebook("kvquant", s.bits, bool(s.calibration), s.outliers, rope=s.rope == "pre")
    storage = WithSink(inner, s.sink, fp16=True) if s.sink else inner
    return Size(f"stores {storage.label}", storage=storage)


def cq(s: Any) -> Size:
    inner = Codebook("cq", s.bits, bool(s.calibration), channels=s.channels)
    storage = WithSink(inner, s.sink, fp16=True) if s.sink else inner
    return Size(f"stores {storage.label}", storage=storage)


def _rank_size(s: Any, inner: Any) -> Size:
    storage = WithSink(inner, s.sink) if s.sink else inner
    if s.rank:
        return Size(f"stores {storage.label}", storage=storage)
    return Size(f"stores {storage.label}", storage=storage, exact=False,
                bound=f"energy={s.energy:g} picks the rank from the data; counted at the largest rank it can pick")


def svd(s: Any) -> Size:
    inner = LowRank(s.rank or None, s.target, bool(s.basis), s.bits, s.qgroup, rope=s.rope == "pre")
    return _rank_size(s, inner)


def latent(s: Any) -> Size:
    return _rank_size(s, Joint(s.rank or None, shared_kv=True, calibrated=bool(s.basis), bits=s.bits,
                               qgroup=s.qgroup))


def xkv(s: Any) -> Size:
    start = s.layers[0] if getattr(s, "layers", None) else 0
    return _rank_size(s, Joint(s.rank or None, s.target, group=s.group, start=start, bits=s.bits, qgroup=s.qgroup))


def minicache(s: Any) -> Size:
    return Size("merges similar tokens of adjacent deep layers into one direction", exact=False,
                bound="depends on how alike adjacent layers are: at most the cache before it (merging only shrinks)")
