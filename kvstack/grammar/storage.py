"""Bits a stage's row encoding holds for one layer, counted as the containers in ``kvstack/stages`` count them.

Every storage model answers two questions about one sequence's layer (keys and values of every
KV head): ``layer_bits(layer, tokens, base, kept)``, the bits ``tokens`` tokens per head take,
and ``bits_per_token(layer, base)``, what one more token costs. ``base`` is the cache's own
:class:`~kvstack.grammar.precision.Precision` (dense rows, bases and coefficients are kept in
it); ``kept`` (a :class:`Kept`) says what a selection before left (pre-RoPE keys store their
int32 positions unless each head's rows form one run; the exact sink rows are the first
positions still held). Each class names the container it mirrors; ``tests/plan/test_recipe_bytes.py``
checks them against ``cache.nbytes``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

from kvstack.errors import RecipeError
from kvstack.grammar.params import check_rank_fits, token_axis_group
from kvstack.grammar.precision import SCALE_BITS, ZERO_BITS, Precision

FP16_BITS = 16
INDEX_BITS = 32  # int32 positions and outlier indices
OUTLIER_BITS = INDEX_BITS + FP16_BITS  # one sparse-table entry: int32 index + fp16 value


def packed_bits(dim: int, bits: int) -> int:
    """Bits one packed row of ``dim`` codes takes (``kvstack.rows.pack.packed_width``: whole blocks of codes)."""
    block = 8 // math.gcd(bits, 8)
    return -(-dim // block) * block * bits


def outlier_count(fraction: float, rows: int, dim: int) -> int:
    """Entries of a sparse outlier table over ``rows x dim`` elements (``SparseOutliers.top``)."""
    return min(int(round(fraction * rows * dim)), rows * dim)


@dataclass(frozen=True)
class Kept:
    """Which positions a layer still holds when a storage stage runs.

    ``evicted``: a selection dropped tokens. ``prefix``: it surely kept the first ``prefix``
    positions and none after them but its window (streaming's ``sink``); None: unknown, counted
    as kept (an upper bound). ``contiguous``: past the prefix, each head holds one run of
    positions (streaming's window)."""

    evicted: bool = False
    prefix: int | None = None
    contiguous: bool = False

    def first(self, sink: int) -> int:
        """How many of the first ``sink`` positions a head still holds (at most)."""
        return sink if not self.evicted or self.prefix is None else min(sink, self.prefix)

    def stores_positions(self, sink: int = 0) -> bool:
        """Whether rows after the first ``sink`` positions need their positions stored (not one run)."""
        if not self.evicted:
            return False
        return not (self.contiguous and self.prefix is not None and self.prefix <= sink)


NOT_EVICTED = Kept()


def _heads(layer: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return tuple(layer.key_vectors()), tuple(layer.value_vectors())


def channel_coefficient_bits(rows_per_segment: int, segments: int, width: int, bits: int, group: int) -> int:
    """Asymmetric per-channel codes of ``width``-wide coefficient rows (``encode_coefficients``)."""
    if not rows_per_segment:
        return 0
    groups = -(-rows_per_segment // group) * width * segments
    return segments * rows_per_segment * packed_bits(width, bits) + groups * (SCALE_BITS + ZERO_BITS)


@dataclass(frozen=True)
class WithSink:
    """The first ``sink`` tokens of each head kept exactly beside ``inner`` (``KeptRows``).

    ``fp16``: stored as float16 when the cache dtype is wider (``quant.sink.keep_sink``); else in
    the cache dtype (the low-rank stages)."""

    inner: Any
    sink: int
    fp16: bool = False

    @property
    def label(self) -> str:
        return f"{self.inner.label}, first {self.sink} tokens exact"

    @property
    def needs_same_tokens(self) -> bool:
        return bool(getattr(self.inner, "needs_same_tokens", False))

    def layer_bits(self, layer: Any, tokens: int, base: Precision, kept: Kept = NOT_EVICTED) -> Fraction:
        s = min(kept.first(self.sink), tokens)
        exact = min(base.bits, FP16_BITS) if self.fp16 else base.bits
        inner = Kept(kept.stores_positions(self.sink))  # the rows after the sink: one run, or not
        return self.inner.layer_bits(layer, tokens - s, base, inner) + s * layer.elements_per_token * exact

    def bits_per_token(self, layer: Any, base: Precision) -> Fraction:
        return self.inner.bits_per_token(layer, base)

    def with_coefficients(self, precision: Any) -> WithSink | None:
        inner = getattr(self.inner, "with_coefficients", None)
        new = inner(precision) if inner else None
        return replace(self, inner=new) if new is not None else None


@dataclass(frozen=True)
class Kivi:
    """KIVI (``SplitRows``): the ``residual`` newest and ``sink`` first tokens of a head dense in the
    cache dtype, the rest as ``precision`` (keys per channel, values per token)."""

    precision: Precision
    residual: int
    sink: int = 0

    @property
    def label(self) -> str:
        return f"{self.precision.label}, last {self.residual} tokens dense"

    def dense(self, tokens: int) -> int:
        return min(tokens, self.residual + self.sink)

    def layer_bits(self, layer: Any, tokens: int, base: Precision, kept: Kept = NOT_EVICTED) -> Fraction:
        dense = self.dense(tokens)
        return self.precision.layer_bits(layer, tokens - dense) + base.layer_bits(layer, dense)

    def bits_per_token(self, layer: Any, base: Precision) -> Fraction:
        return self.precision.bits_per_token(layer)


@dataclass(frozen=True)
class Gear:
    """GEAR (``GearRows``): KIVI-style codes with fp16 scale + zero per group, an fp16 factor ``A``
    (``rank`` per row) and ``B`` (``d x rank`` per head), and a sparse table of outliers."""

    bits: int
    rank: int
    outliers: float
    group: int

    @property
    def label(self) -> str:
        return f"gear{self.bits} g{self.group} + rank-{self.rank} fp16 error factors + {self.outliers:g} outliers"

    def _part(self, dims: tuple[int, ...], tokens: int, per_channel: bool) -> Fraction:
        if not dims or not tokens:
            return Fraction(0)
        d, heads = dims[0], len(dims)
        rows = heads * tokens
        codes = rows * packed_bits(d, self.bits)
        if per_channel:  # keys: groups of `group` tokens of one channel within a head
            groups = heads * -(-tokens // self.group) * d
        else:  # values: groups of `group` channels (capped at d, which they must tile) of one row
            groups = rows * (d // token_axis_group("gear", self.group, d))
        factors = (rows + heads * d) * self.rank * FP16_BITS
        return Fraction(codes + groups * (SCALE_BITS + ZERO_BITS) + factors
                        + outlier_count(self.outliers, rows, d) * OUTLIER_BITS)

    def layer_bits(self, layer: Any, tokens: int, base: Precision, kept: Kept = NOT_EVICTED) -> Fraction:
        keys, values = _heads(layer)
        return self._part(keys, tokens, True) + self._part(values, tokens, False)

    def bits_per_token(self, layer: Any, base: Precision) -> Fraction:
        keys, values = _heads(layer)
        share = Fraction(repr(self.outliers))
        total = Fraction(0)
        for dims, per_channel in ((keys, True), (values, False)):
            for d in dims:
                groups = Fraction(d, self.group) if per_channel else d // min(self.group, d)
                total += packed_bits(d, self.bits) + self.rank * FP16_BITS + share * d * OUTLIER_BITS
                total += groups * (SCALE_BITS + ZERO_BITS)
        return total


@dataclass(frozen=True)
class Codebook:
    """KVQuant (``NuqRows``) and CQ (``CQRows``): packed codebook indices, their fp16 codebooks (unless
    calibrated: shared by the model's caches, not counted), and for KVQuant fp16 zero/scale and outliers.

    ``kind="kvquant"``: ``bits`` per element, keys' zero/scale per head channel, values' per row,
    pre-RoPE keys (``rope``) store int32 positions once eviction broke their runs. ``kind="cq"``: one
    ``bits * channels``-bit code per ``channels`` elements, a ``2**(bits*channels)``-entry codebook
    of ``channels``-vectors per head and channel group."""

    kind: str
    bits: int
    calibrated: bool
    outliers: float = 0.0
    rope: bool = False
    channels: int = 1

    @property
    def label(self) -> str:
        book = "calibrated codebooks" if self.calibrated else "fp16 codebooks"
        if self.kind == "cq":
            return f"cq {self.bits} bit/channel ({self.channels} channels per code), {book}"
        return f"kvquant{self.bits} + fp16 zero/scale + {self.outliers:g} outliers, {book}"

    def _part(self, dims: tuple[int, ...], tokens: int, keys: bool, moved: bool) -> Fraction:
        if not dims:
            return Fraction(0)
        d, heads = dims[0], len(dims)
        rows = heads * tokens
        if self.kind == "cq":
            if d % self.channels:
                raise RecipeError(f"cq: channels={self.channels} does not divide head_dim={d}")
            code = self.bits * self.channels
            book = heads * (d // self.channels) * (1 << code) * self.channels * FP16_BITS
            return Fraction(rows * packed_bits(d // self.channels, code) + (0 if self.calibrated else book))
        params = heads * d if keys else rows  # zero and scale: per head channel (keys), per row (values)
        book = 0 if self.calibrated else heads * (1 << self.bits) * FP16_BITS
        total = rows * packed_bits(d, self.bits) + params * 2 * FP16_BITS + book
        total += outlier_count(self.outliers, rows, d) * OUTLIER_BITS
        if keys and self.rope and moved:
            total += rows * INDEX_BITS
        return Fraction(total)

    def layer_bits(self, layer: Any, tokens: int, base: Precision, kept: Kept = NOT_EVICTED) -> Fraction:
        keys, values = _heads(layer)
        moved = kept.stores_positions()
        return self._part(keys, tokens, True, moved) + self._part(values, tokens, False, moved)

    def bits_per_token(self, layer: Any, base: Precision) -> Fraction:
        keys, values = _heads(layer)
        if self.kind == "cq":
            code = self.bits * self.channels
            return Fraction(sum(packed_bits(d // self.channels, code) for d in keys + values))
        total = Fraction(sum(packed_bits(d, self.bits) for d in keys + values))
        share = Fraction(repr(self.outliers))
        total += len(values) * 2 * FP16_BITS + share * sum(keys + values) * OUTLIER_BITS
        return total


@dataclass(frozen=True)
class LowRank:
    """``svd`` (``LowRankRows``): per head, ``rank`` coefficients per row (cache dtype, or ``coefficients``
    when a quantizer follows) and a ``d x rank`` basis in the cache dtype (not counted when calibrated).
    Only the ``target`` parts (keys ``k``, values ``v``) are projected; the others stay dense."""

    rank: int | None  # None: chosen from the data by energy=; counted at its most, head_dim
    target: str
    calibrated: bool
    bits: int = 0
    qgroup: int = 64
    rope: bool = False
    coefficients: Precision | None = None

    @property
    def label(self) -> str:
        coef = f"{self.bits}-bit" if self.bits else (self.coefficients.label if self.coefficients else "dense")
        rank = f"rank-{self.rank}" if self.rank else "rank <= head_dim"
        return f"{rank} {self.target} ({coef} coefficients)"

    def with_coefficients(self, precision: Any) -> LowRank | None:
        """A uniform quantizer after ``svd`` quantizes the coefficients (``quantize_encoded``)."""
        return replace(self, coefficients=precision, bits=0) if isinstance(precision, Precision) else None

    def _coefficient_bits(self, heads: int, tokens: int, rank: int, base: Precision) -> Fraction:
        if self.bits:
            return Fraction(channel_coefficient_bits(tokens, heads, rank, self.bits, self.qgroup))
        precision = self.coefficients or base
        return precision.layer_bits(_Rows(heads, rank), tokens)

    def layer_bits(self, layer: Any, tokens: int, base: Precision, kept: Kept = NOT_EVICTED) -> Fraction:
        total = Fraction(0)
        for part, dims in zip("kv", _heads(layer), strict=True):
            if not dims:
                continue
            d, heads = dims[0], len(dims)
            if part not in self.target:
                total += tokens * heads * d * base.bits
                continue
            rank = self.rank or d
            check_rank_fits("svd", rank, d, "head_dim")
            total += self._coefficient_bits(heads, tokens, rank, base)
            total += 0 if self.calibrated else heads * d * rank * base.bits
            if part == "k" and self.rope and kept.stores_positions():
                total += heads * tokens * INDEX_BITS
        return total

    def bits_per_token(self, layer: Any, base: Precision) -> Fraction:
        total = Fraction(0)
        for part, dims in zip("kv", _heads(layer), strict=True):
            if not dims:
                continue
            rank = self.rank or dims[0]
            if part not in self.target:
                total += sum(dims) * base.bits
            elif self.bits:
                total += len(dims) * (packed_bits(rank, self.bits)
                                      + Fraction(rank * (SCALE_BITS + ZERO_BITS), self.qgroup))
            else:
                total += (self.coefficients or base).bits_per_token(_Rows(len(dims), rank))
        return total


@dataclass(frozen=True)
class Joint:
    """``latent`` and ``xkv`` (``JointRows``): one ``rank``-vector of coefficients per token shared by
    several parts, each part holding its block ``[heads * d, rank]`` of the joint basis (cache dtype).

    ``latent``: keys and values of a layer share one vector (``shared_kv``). ``xkv``: each ``target``
    part has its own vector, shared by ``group`` adjacent layers and counted by the first of them
    (``start`` is where the stage's layers begin)."""

    needs_same_tokens = True  # one vector per token: every head must hold the same tokens
    rank: int | None  # None: chosen from the data by energy=; counted at its most, the joint row width
    target: str = "kv"
    shared_kv: bool = False
    group: int = 1
    start: int = 0
    calibrated: bool = False
    bits: int = 0
    qgroup: int = 64

    @property
    def label(self) -> str:
        coef = f"{self.bits}-bit" if self.bits else "dense"
        what = "K+V latent" if self.shared_kv else f"{self.target} shared by {self.group} layers"
        rank = f"rank-{self.rank}" if self.rank else "rank <= joint row width"
        return f"{rank} {what} ({coef} coefficients)"

    def _rank(self, layer: Any) -> int:
        """``rank``, or the most ``energy=`` can pick: the width of the rows that share a vector."""
        keys, values = _heads(layer)
        width = sum(keys) + sum(values) if self.shared_kv else self.group * max(sum(keys), sum(values))
        if self.rank:
            check_rank_fits("latent" if self.shared_kv else "xkv", self.rank, width, "the joint row width")
        return self.rank or width

    def _coefficients(self, tokens: int, rank: int, base: Precision) -> Fraction:
        if self.bits:
            return Fraction(channel_coefficient_bits(tokens, 1, rank, self.bits, self.qgroup))
        return Fraction(tokens * rank * base.bits)

    def _owners(self, layer: Any) -> int:
        """Coefficient vectors this layer counts."""
        if self.shared_kv:
            return 1
        if (layer.index - self.start) % self.group:
            return 0
        return len(self.target)

    def layer_bits(self, layer: Any, tokens: int, base: Precision, kept: Kept = NOT_EVICTED) -> Fraction:
        rank = self._rank(layer)
        total = self._owners(layer) * self._coefficients(tokens, rank, base)
        for part, dims in zip("kv", _heads(layer), strict=True):
            if self.shared_kv or part in self.target:
                total += 0 if self.calibrated else sum(dims) * rank * base.bits
            else:
                total += tokens * sum(dims) * base.bits
        return total

    def bits_per_token(self, layer: Any, base: Precision) -> Fraction:
        rank = self._rank(layer)
        per = (packed_bits(rank, self.bits) + Fraction(rank * (SCALE_BITS + ZERO_BITS), self.qgroup)
               if self.bits else Fraction(rank * base.bits))
        owners = 1 if self.shared_kv else Fraction(len(self.target), self.group)
        dense = sum(sum(dims) for part, dims in zip("kv", _heads(layer), strict=True)
                    if not self.shared_kv and part not in self.target)
        return owners * per + dense * base.bits


@dataclass(frozen=True)
class _Rows:
    """A pseudo-layer of ``heads`` coefficient rows of ``width`` per token (keys only)."""

    heads: int
    width: int

    def key_vectors(self) -> tuple[int, ...]:
        return (self.width,) * self.heads

    def value_vectors(self) -> tuple[int, ...]:
        return ()

    @property
    def elements_per_token(self) -> int:
        return self.heads * self.width
