"""Declarations of the stages that store rows differently (family ``quantize``) and the identity.

Implementations: :mod:`kvstack.stages.identity` (identity, fp16, bf16, fp32),
:mod:`kvstack.stages.quant.uniform` (int8/4/3/2), ``quant.kivi``, ``quant.gear``, ``quant.kvquant``
and ``quant.cq``. Sizes: :mod:`kvstack.grammar.sizes`.
"""

from __future__ import annotations

from typing import Any

from kvstack.errors import RecipeError
from kvstack.grammar import sizes
from kvstack.grammar.params import (
    AUTO,
    AXES,
    PACKED_BITS,
    SAME,
    Param,
    as_bool,
    check_outliers,
    check_quant_sink,
    group_shorthand,
    parse_axis,
    parse_rot,
    parse_vaxis,
)
from kvstack.grammar.spec import StageSpec

INT_BITS = {"int8": 8, "int4": 4, "int3": 3, "int2": 2}
KIVI_BITS = (2, 4)
GEAR_BITS = (2, 3, 4)
KVQUANT_BITS = (2, 3, 4)
CQ_BITS = (1, 2)
ROPE_MODES = ("pre", "post")

CALIBRATION = Param(
    "calibration", str, "", "codebook file from `kvstack calibrate --codebooks` (not counted); empty: fit on the cache"
)
_SHORT = {
    "sym": ("sym", True),
    "asym": ("sym", False),
    "token": ("axis", "token"),
    "channel": ("axis", "channel"),
    "rot": ("rot", True),
    "norot": ("rot", False),
}


def int_shorthand(token: str) -> tuple[str, Any] | None:
    """``sym``/``asym``/``token``/``channel``/``rot``/``norot`` and ``g64``."""
    return _SHORT.get(token.strip().lower()) or group_shorthand(token)


def int_params(sym: bool, axis: str = "token", rot: bool | str = False, group: int = 64) -> tuple[Param, ...]:
    """The parameters of int8/4/3/2; only their defaults differ."""
    return (
        Param("group", int, group, f"elements per scale (g{group}): channels of a token, or tokens of a channel"),
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


def value_axis(s: Any) -> str:
    """The axis the values are grouped along: ``vaxis``, or ``axis`` when it says ``same``."""
    return s.axis if s.vaxis == SAME else s.vaxis


def _check_int(s: Any) -> None:
    if s.axis not in AXES:
        raise RecipeError(f"{s.name}: axis={s.axis!r} is not one of {', '.join(AXES)}")
    if not isinstance(s.sym, bool):
        raise RecipeError(f"{s.name}: sym={s.sym!r} must be True (sym) or False (asym)")
    if s.rot not in (True, False, AUTO) or not isinstance(s.seed, int) or not 0 <= s.seed < 2**63:
        raise RecipeError(f"{s.name}: rot={s.rot!r} must be True/False and seed={s.seed!r} an int >= 0")
    if not isinstance(s.clip, float | int) or not 0 < s.clip <= 1:
        raise RecipeError(f"{s.name}: clip={s.clip!r} must be in (0, 1]: the share of a group's range kept")
    check_quant_sink(s.name, s.sink)
    if s.vaxis != SAME and s.vaxis not in AXES:
        raise RecipeError(f"{s.name}: vaxis={s.vaxis!r} is not one of same, {', '.join(AXES)}")
    if not isinstance(s.group, int) or isinstance(s.group, bool) or s.group <= 0:
        raise RecipeError(f"{s.name}: group={s.group!r} must be a positive whole number of elements, e.g. g64")
    if isinstance(s.vbits, bool) or s.vbits not in (0, 2, 3, 4, 8):
        raise RecipeError(f"{s.name}: vbits={s.vbits!r} must be 8, 4, 3 or 2 (0: the stage's own)")


def _check_kivi(s: Any) -> None:
    if s.bits not in KIVI_BITS:
        raise RecipeError(
            f"kivi:{s.bits} does not exist; KIVI bit widths: {', '.join(map(str, KIVI_BITS))} "
            "(for other widths use int8/int4/int3/int2 with axis=channel)"
        )
    if not isinstance(s.group, int) or s.group <= 0:
        raise RecipeError(f"kivi: group={s.group!r} must be a positive number of elements, e.g. g32")
    if not isinstance(s.residual, int) or s.residual < 0:
        raise RecipeError(f"kivi: residual={s.residual!r} must be >= 0 tokens (0 quantizes everything)")
    if not isinstance(s.sink, int) or s.sink < 0:
        raise RecipeError(f"kivi: sink={s.sink!r} must be >= 0 tokens kept dense (0: none)")


def _check_gear(s: Any) -> None:
    if s.bits not in GEAR_BITS:
        raise RecipeError(f"gear:{s.bits} does not exist; bit widths: {', '.join(map(str, GEAR_BITS))}")
    if not isinstance(s.rank, int) or s.rank < 0:
        raise RecipeError(f"gear: rank={s.rank} must be >= 0 (0: no low-rank error fix)")
    check_outliers(s.name, s.outliers)
    if not isinstance(s.group, int) or s.group <= 0:
        raise RecipeError(f"gear: group={s.group!r} must be a positive number of elements, e.g. g64")


def _check_kvquant(s: Any) -> None:
    if s.bits not in KVQUANT_BITS:
        raise RecipeError(
            f"kvquant:{s.bits} does not exist; bit widths: {', '.join(map(str, KVQUANT_BITS))} "
            "(uniform widths: int8/int4/int3/int2)"
        )
    check_outliers(s.name, s.outliers)
    check_quant_sink(s.name, s.sink)
    if s.rope not in ROPE_MODES:
        raise RecipeError(f"kvquant: rope={s.rope!r} is not one of {', '.join(ROPE_MODES)} (default pre)")


def _check_cq(s: Any) -> None:
    if s.bits not in CQ_BITS:
        raise RecipeError(f"cq:{s.bits} does not exist; bits per channel: {', '.join(map(str, CQ_BITS))}")
    if not isinstance(s.channels, int) or s.channels < 1 or s.bits * s.channels not in PACKED_BITS:
        fits = [c for c in range(1, 9) if s.bits * c in PACKED_BITS]
        raise RecipeError(
            f"cq:{s.bits}: channels={s.channels} gives {s.bits * s.channels}-bit codes; packed code "
            f"widths are {', '.join(map(str, PACKED_BITS))} bits: pick channels from {fits}"
        )
    check_quant_sink(s.name, s.sink)


def _int(name: str, summary: str, params: tuple[Param, ...]) -> StageSpec:
    return StageSpec(name, "quantize", summary, params, int_shorthand, _check_int, sizes.uniform)


SPECS: tuple[StageSpec, ...] = (
    StageSpec("identity", "misc", "keep the cache as the model made it (the full-cache baseline)",
              size=sizes.unchanged),
    StageSpec("fp16", "quantize", "store keys/values as float16 (use with @layerN to exempt layers from quantization)",
              size=sizes.cast),
    StageSpec("bf16", "quantize", "store keys/values as bfloat16", size=sizes.cast),
    StageSpec("fp32", "quantize", "store keys/values as float32", size=sizes.cast),
    _int("int8", "round-to-nearest INT8 (symmetric per token by default), fp16 scale per group", int_params(sym=True)),
    # int4's default layout was chosen on real models (RULER, SmolLM2-135M, n=40 held out): rotated rows in
    # groups of tokens per channel keep the full cache's multi-key accuracy where per-token groups lose a
    # fifth of it (benchmarks/RESULTS.md). `int4:token,norot` is the layout before that. Groups of 32 tokens
    # (fifth session; KIVI's key group) rather than 64: on three held-out SmolLM2 sets g64 lost 10 more multi-key
    # answers than it gained against g32 (2 / 10, McNemar p = 0.04, n = 120) for 10% more bytes (3.2x vs 3.55x
    # below bf16). `int4:g64` is the previous default, which the presets keep (their held-out numbers).
    _int("int4",
         "round-to-nearest INT4, two codes per byte, fp16 scale + zero per group (default: channel groups of 32, rot)",
         int_params(sym=False, axis="channel", rot=AUTO, group=32)),
    _int("int3", "round-to-nearest INT3, eight codes in three bytes, fp16 scale + zero per group",
         int_params(sym=False)),
    _int("int2", "round-to-nearest INT2, four codes per byte, fp16 scale + zero per group", int_params(sym=False)),
    StageSpec(
        "kivi", "quantize", "KIVI: keys per-channel, values per-token (2 or 4 bits), last `residual` tokens dense",
        (
            Param("bits", int, 2, f"bits per code: {' or '.join(map(str, KIVI_BITS))}"),
            Param("group", int, 32, "tokens per key group, channels per value group (g32)"),
            Param("residual", int, 128, "most recent tokens of each head kept in full precision"),
            Param("sink", int, 0, "first tokens kept in full precision too (attention sinks; 0: none, as in KIVI)"),
        ),
        group_shorthand, _check_kivi, sizes.kivi,
    ),
    StageSpec(
        "gear", "quantize",
        "GEAR: KIVI-style uniform codes + sparse fp16 outliers + rank-r fp16 fix of the error per head",
        (
            Param("bits", int, 4, f"bits per code: {', '.join(map(str, GEAR_BITS))}"),
            Param("rank", int, 4, "rank of the per-head approximation of the quantization error (0: none)"),
            Param("outliers", float, 0.01, "share of elements kept exactly (fp16) in a sparse table, in [0, 1)"),
            Param("group", int, 64, "tokens per key group, channels per value group (g64)"),
        ),
        group_shorthand, _check_gear, sizes.gear,
    ),
    StageSpec(
        "kvquant", "quantize",
        "KVQuant-style: pre-RoPE keys per channel, values per token, k-means levels, sparse outliers, fp16 sink",
        (
            Param("bits", int, 3, f"bits per code: {', '.join(map(str, KVQUANT_BITS))}"),
            Param("outliers", float, 0.01, "share of elements kept exactly (fp16) in a sparse table, in [0, 1)"),
            Param("sink", int, 1, "first tokens kept in fp16 (attention sinks)"),
            Param("rope", str, "pre", "keys quantized before RoPE (pre) or as cached (post)"),
            CALIBRATION,
        ),
        check=_check_kvquant, size=sizes.kvquant,
    ),
    StageSpec(
        "cq", "quantize", "coupled quantization: k-means codebooks over groups of c channels, 1 or 2 bits per channel",
        (
            Param("bits", int, 1, f"bits per channel: {' or '.join(map(str, CQ_BITS))}"),
            Param("channels", int, 4, "contiguous channels quantized jointly (2**(bits*channels) centroids)"),
            Param("sink", int, 1, "first tokens kept in fp16 (attention sinks)"),
            CALIBRATION,
        ),
        check=_check_cq, size=sizes.cq,
    ),
)
