"""QuantRows against a float64 reference: every element within half a step of its input,
scales as tight as fp16 allows, groups laid out as documented (never across heads), bytes
counted exactly and really held as uint8 codes + fp16 parameters."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstack.errors import InputError, RecipeError
from kvstack.rows.pack import packed_width
from kvstack.rows.quant import QuantRows

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Decoding rounds to the output dtype: half an ulp relative, or half the smallest subnormal.
REL_OUT = {torch.float32: 0.0, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
ABS_OUT = {torch.float32: 0.0, torch.float16: 2.0**-25, torch.bfloat16: 2.0**-134}


def ref_group_ids(q: QuantRows, n: int) -> torch.Tensor:
    """Channel axis: group of each row, by plain loops over heads (the reference layout)."""
    ids, base = [], 0
    for length in q.segments:
        ids += [base + i // q.group for i in range(length)]
        base += math.ceil(length / q.group)
    assert len(ids) == n
    return torch.tensor(ids, dtype=torch.long)


def per_element(q: QuantRows, t: torch.Tensor | None, n: int) -> torch.Tensor:
    """A per-group tensor (scales, zeros, stats) spread to one value per element, float64."""
    if t is None:
        return torch.zeros(n, q.dim, dtype=torch.float64)
    t = t.double()
    return t.repeat_interleave(q.group, 1) if q.axis == "token" else t[ref_group_ids(q, n)]


def ref_stats(q: QuantRows, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 min and max of every group, computed independently of the implementation."""
    x = x.double()
    n, d = x.shape
    if q.axis == "token":
        g = x.reshape(n, d // q.group, q.group)
        return g.amin(-1), g.amax(-1)
    ids = ref_group_ids(q, n)
    count = int(ids.max()) + 1 if n else 0
    lo = torch.stack([x[ids == i].amin(0) for i in range(count)]) if count else x[:0]
    hi = torch.stack([x[ids == i].amax(0) for i in range(count)]) if count else x[:0]
    return lo, hi


def qmax(q: QuantRows) -> int:
    return (1 << (q.bits - 1)) - 1 if q.sym else (1 << q.bits) - 1


def error_bound(q: QuantRows, x: torch.Tensor) -> torch.Tensor:
    """Per-element bound on |x - decode|: half a step, plus the float rounding that can add.

    The code is round((x - zero) / scale) with two fp32 roundings in the ratio (at most
    qmax * 2^-22 steps off), the fp32 reconstruction q*scale + zero rounds once (2^-24 of a
    value below |x| + scale, doubled for slack), and the cast to the output dtype rounds once.
    """
    n = x.shape[0]
    s = per_element(q, q.scales, n)
    mag = x.double().abs() + s
    rel, tiny = REL_OUT[q.dtype], ABS_OUT[q.dtype]
    return s / 2 + s * qmax(q) * 2.0**-22 + mag * 2.0**-23 + mag * rel * (1 + 2.0**-7) + tiny


def assert_within_bound(q: QuantRows, x: torch.Tensor) -> None:
    dec = q.decode()
    assert dec.dtype == q.dtype and dec.shape == x.shape
    err = (dec.double() - x.double()).abs()
    bound = error_bound(q, x)
    worst = (err - bound).max() if err.numel() else torch.tensor(-1.0)
    assert bool((err <= bound).all()), f"error exceeds bound by {float(worst):.3g}"


def assert_tight_parameters(q: QuantRows, x: torch.Tensor) -> None:
    """Scales (and zeros) are the nearest fp16 values that still cover each group's range."""
    lo, hi = ref_stats(q, x)
    s = q.scales.double()
    up = lambda t: torch.nextafter(t, torch.full_like(t, math.inf)).double()
    down = lambda t: torch.nextafter(t, torch.full_like(t, -math.inf)).double()
    if q.sym:
        need = torch.maximum(lo.abs(), hi.abs())
    else:
        z = q.zeros.double()
        assert bool((z <= lo).all()) and bool((up(q.zeros) > lo).all()), "zero is not fp16-round-down(min)"
        need = hi - z
    assert bool((s * qmax(q) >= need * (1 - 2.0**-22)).all()), "scale does not cover the group"
    assert bool((down(q.scales) * qmax(q) < need * (1 + 2.0**-22) + 1e-300).all()), "scale is not tight"


def held_tensors(enc) -> list[torch.Tensor]:
    out = []
    for f in dataclasses.fields(enc):
        v = getattr(enc, f.name)
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif dataclasses.is_dataclass(v):
            out += held_tensors(v)
    return out


def assert_bytes_real(q: QuantRows) -> None:
    tensors = held_tensors(q)
    assert q.nbytes == sum(t.element_size() * t.numel() for t in tensors)
    for t in tensors:  # no view into a larger buffer: the storage is exactly what is counted
        assert t.untyped_storage().nbytes() == t.element_size() * t.numel()
    assert q.codes.dtype == torch.uint8 and q.scales.dtype == torch.float16
    assert q.zeros is None or q.zeros.dtype == torch.float16


def make_rows(lengths, d, dtype, seed, mode="randn", spread=1.0) -> torch.Tensor:
    """Head-major rows; each head gets its own offset and magnitude, so a group crossing a head
    boundary would show up as a scale far too large for one of them."""
    g = torch.Generator().manual_seed(seed)
    parts = []
    for h, length in enumerate(lengths):
        mag = spread * (10.0 ** ((h % 3) - 1))
        if mode == "const":
            part = torch.full((length, d), 0.37 * mag * (h + 1))
        elif mode == "outlier":
            part = torch.randn(length, d, generator=g) * mag
            part[:, (h * 7) % d] *= 40.0
        else:
            part = torch.randn(length, d, generator=g) * mag + 3.0 * mag * (h - 1)
        parts.append(part)
    return torch.cat(parts).to(dtype) if parts else torch.zeros(0, d, dtype=dtype)


@st.composite
def cases(draw):
    axis = draw(st.sampled_from(("token", "channel")))
    d = draw(st.integers(1, 40))
    if axis == "token":
        group = draw(st.sampled_from([g for g in range(1, d + 1) if d % g == 0]))
    else:
        group = draw(st.integers(1, 24))
    heads = draw(st.integers(1, 3))
    lengths = tuple(draw(st.lists(st.integers(0, 20), min_size=heads, max_size=heads)))
    return dict(
        bits=draw(st.sampled_from((2, 3, 4, 8))),
        axis=axis,
        sym=draw(st.booleans()),
        dtype=draw(st.sampled_from(DTYPES)),
        d=d,
        group=group,
        lengths=lengths,
        mode=draw(st.sampled_from(("randn", "randn", "outlier", "const"))),
        spread=draw(st.sampled_from((1e-3, 1.0, 30.0))),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def build(c) -> tuple[QuantRows, torch.Tensor]:
    x = make_rows(c["lengths"], c["d"], c["dtype"], c["seed"], c["mode"], c["spread"])
    segments = c["lengths"] if c["axis"] == "channel" else None
    return QuantRows.quantize(x, c["bits"], c["group"], c["axis"], c["sym"], segments), x


@settings(max_examples=120, deadline=None)
@given(c=cases())
def test_round_trip_within_half_step(c):
    q, x = build(c)
    assert q.shape == tuple(x.shape) and q.dtype == x.dtype
    assert_within_bound(q, x)
    assert_tight_parameters(q, x)
    assert_bytes_real(q)
    n, d = x.shape
    if c["axis"] == "token":
        groups = n * d // c["group"]
    else:
        groups = d * sum(-(-t // c["group"]) for t in c["lengths"])
    assert q.nbytes == n * packed_width(d, c["bits"]) + 2 * groups * (1 if c["sym"] else 2)


@settings(max_examples=40, deadline=None)
@given(c=cases(), pick_seed=st.integers(0, 2**31 - 1))
def test_select(c, pick_seed):
    q, x = build(c)
    n = x.shape[0]
    offsets = [sum(c["lengths"][:h]) for h in range(len(c["lengths"]))]
    g = torch.Generator().manual_seed(pick_seed)
    # what KVLayer.select_rows passes: per head, kept indices in order, offset to the head
    heads = list(zip(offsets, c["lengths"], strict=True))
    rows = torch.cat([off + torch.nonzero(torch.rand(t, generator=g) < 0.6).flatten() for off, t in heads])
    sel = q.select(rows)
    assert isinstance(sel, QuantRows) and sel.shape == (rows.numel(), c["d"]) and sel.dtype == x.dtype
    assert_bytes_real(sel)
    if c["axis"] == "token":
        # packed rows and their scales are taken as they are: no requantization
        assert torch.equal(sel.codes, q.codes[rows]) and torch.equal(sel.scales, q.scales[rows])
        assert torch.equal(sel.decode(), q.decode()[rows])
        return
    # channel axis: requantized from the kept rows, groups re-cut within the heads they came from
    kept_per_head = tuple(int(((rows >= o) & (rows < o + t)).sum()) for o, t in heads)
    assert sel.segments == tuple(k for k in kept_per_head if k)
    assert_within_bound(sel, q.dequantize()[rows])
    assert_tight_parameters(sel, q.dequantize()[rows])
    # and against the original input: one half step of each quantization
    old = error_bound(q, x)[rows] if n else torch.zeros(0, c["d"], dtype=torch.float64)
    err = (sel.decode().double() - x.double()[rows]).abs()
    assert bool((err <= old + error_bound(sel, q.dequantize()[rows])).all())


def test_channel_groups_stay_inside_heads_and_last_group_is_partial():
    x = make_rows((5, 3), 4, torch.float32, 0, spread=1.0)
    x[5:] *= 1000.0  # head 1 a thousand times larger
    q = QuantRows.quantize(x, 4, 4, "channel", segments=(5, 3))
    assert q.scales.shape == (3, 4)  # head 0: 4 + 1 tokens, head 1: 3 tokens
    assert_within_bound(q, x)
    assert_tight_parameters(q, x)
    head0_step = q.scales[:2].float().max()
    assert float((q.decode()[:5] - x[:5]).abs().max()) <= float(head0_step)  # not head 1's step


@pytest.mark.parametrize(
    ("bits", "group", "axis", "sym", "expected"),
    [
        # int4 g32 asym, 2 heads x 10 tokens x 64 dims: T*H*D/2 codes + 2 bytes * groups * (scale, zero)
        (4, 32, "token", False, 10 * 2 * 64 // 2 + 2 * (10 * 2 * 64 // 32) * 2),
        (8, 64, "token", True, 10 * 2 * 64 + 2 * (10 * 2 * 64 // 64)),  # the historical int8 format
        (3, 64, "token", False, 10 * 2 * 64 * 3 // 8 + 2 * (10 * 2) * 2),
        (2, 16, "token", True, 10 * 2 * 64 // 4 + 2 * (10 * 2 * 64 // 16)),
        # channel axis, g4 tokens: ceil(10/4)=3 groups per head and channel
        (4, 4, "channel", False, 10 * 2 * 64 // 2 + 2 * (2 * 3 * 64) * 2),
        (2, 32, "channel", False, 10 * 2 * 64 // 4 + 2 * (2 * 1 * 64) * 2),
    ],
)
def test_nbytes_hand_count(bits, group, axis, sym, expected):
    x = make_rows((10, 10), 64, torch.float16, 1)
    q = QuantRows.quantize(x, bits, group, axis, sym, segments=(10, 10))
    assert q.nbytes == expected
    assert_bytes_real(q)


def test_int3_pads_rows_to_whole_blocks_and_counts_it():
    x = make_rows((3,), 12, torch.float32, 2)
    q = QuantRows.quantize(x, 3, 12, "token")
    assert q.codes.shape == (3, 6)  # 12 codes -> 16 (two 8-code blocks of 3 bytes)
    assert q.nbytes == 3 * 6 + 3 * 2 * 2
    assert_within_bound(q, x)


def test_sym_int8_codes_and_exact_values():
    x = torch.tensor([[0.0, 1.0, -1.0, 0.5]])
    q = QuantRows.quantize(x, 8, 4, "token", sym=True)
    assert q.zeros is None and float(q.scales) == pytest.approx(1 / 127, rel=2**-10)
    codes = q.codes[0].int() - 128
    assert codes.tolist() == [0, 127, -127, round(0.5 / float(q.scales))]


@pytest.mark.parametrize("axis", ["token", "channel"])
@pytest.mark.parametrize("sym", [False, True])
def test_constant_and_zero_groups_are_exact(axis, sym):
    x = torch.tensor([[0.375] * 4, [0.0] * 4, [-2.0] * 4], dtype=torch.float16)
    q = QuantRows.quantize(x, 2, 1 if axis == "channel" else 4, axis, sym, segments=(1, 1, 1))
    assert torch.equal(q.decode(), x)


@pytest.mark.parametrize("axis", ["token", "channel"])
def test_empty_rows(axis):
    x = torch.zeros(0, 8, dtype=torch.bfloat16)
    q = QuantRows.quantize(x, 4, 8, axis, segments=(0, 0))
    assert q.shape == (0, 8) and q.nbytes == 0 and q.decode().shape == (0, 8)
    assert q.select(torch.zeros(0, dtype=torch.long)).shape == (0, 8)


def test_values_beyond_fp16_range_are_refused():
    with pytest.raises(InputError, match="float16 range"):
        QuantRows.quantize(torch.tensor([[1e6, -1e6]]), 4, 2)
    with pytest.raises(InputError, match="NaN"):
        QuantRows.quantize(torch.tensor([[float("nan"), 0.0]]), 4, 2, "channel")


def test_bad_settings_are_refused():
    x = torch.zeros(2, 8)
    with pytest.raises(RecipeError, match="bit widths: 2, 3, 4, 8"):
        QuantRows.quantize(x, 5, 8)
    with pytest.raises(RecipeError, match=r"pick one of \[1, 2, 4, 8\]"):
        QuantRows.quantize(x, 4, 3)
    with pytest.raises(RecipeError, match="axis"):
        QuantRows.quantize(x, 4, 8, "diagonal")
    with pytest.raises(InputError, match="segments"):
        QuantRows.quantize(x, 4, 8, "channel", segments=(1, 2))
