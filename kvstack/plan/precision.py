"""Bits per cached element for each storage dtype, counted exactly.

int4 is half a byte, not one: the planner counts bits per token and rounds to bytes once per
layer. A quantizer also stores a scale (and usually a zero point) for every group of elements;
``group_size`` adds that fp16 overhead so "4-bit" is not mistaken for a 4x saving over bf16.
"""

from __future__ import annotations

from fractions import Fraction

from kvstack.errors import ConfigError, InputError
from kvstack.grammar.precision import SCALE_BITS, ZERO_BITS, Precision

DTYPE_BITS = {"fp32": 32, "bf16": 16, "fp16": 16, "fp8": 8, "int8": 8, "int4": 4, "int2": 2}
FLOAT_DTYPES = frozenset({"fp32", "bf16", "fp16", "fp8"})
_ALIASES = {
    "float32": "fp32",
    "float": "fp32",
    "f32": "fp32",
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
    "f16": "fp16",
    "float8": "fp8",
    "fp8_e4m3": "fp8",
    "fp8_e5m2": "fp8",
    "float8_e4m3fn": "fp8",
    "float8_e5m2": "fp8",
    "e4m3": "fp8",
    "e5m2": "fp8",
}


def canonical_dtype(name: str) -> str:
    """``bfloat16`` -> ``bf16`` and so on; InputError listing the accepted names otherwise."""
    key = str(name).strip().lower().removeprefix("torch.")
    key = _ALIASES.get(key, key)
    if key not in DTYPE_BITS:
        raise InputError(
            f"unknown cache dtype {name!r}; use one of {', '.join(DTYPE_BITS)} "
            "(or a torch name such as bfloat16/float16/float32)"
        )
    return key


def config_dtype(raw: object) -> str | None:
    """The dtype a config.json declares (``torch_dtype``/``dtype``), or None when it names none."""
    if raw is None:
        return None
    try:
        key = canonical_dtype(str(raw))
    except InputError:
        return None
    return key if key in FLOAT_DTYPES else None


def precision_for(
    dtype: str, group_size: int | None = None, bits: float | None = None
) -> Precision:
    """The Precision for ``--dtype``, ``--group-size`` and ``--bits``.

    ``bits`` overrides the dtype's width (``--bits 4`` = any 4-bit format); ``group_size``
    adds one fp16 scale and one fp16 zero point per group and only makes sense for integer
    formats, so it is refused for float dtypes unless ``bits`` is given.
    """
    name = canonical_dtype(dtype)
    width = Fraction(DTYPE_BITS[name])
    if bits is not None:
        try:
            width = Fraction(str(bits))
        except (TypeError, ValueError):
            raise InputError(f"--bits must be a number, got {bits!r}") from None
        if not 0 < width <= 64:
            raise InputError(f"--bits must be between 0 and 64 bits per element, got {bits}")
        name = f"{format(float(width), 'g')}-bit"
    if group_size is not None:
        if group_size < 1:
            raise InputError(f"--group-size must be at least 1 element, got {group_size}")
        if bits is None and name in FLOAT_DTYPES:
            raise InputError(
                f"--group-size adds quantization scales, which {name} does not have; use it with "
                "an integer dtype (--dtype int4/int2/int8) or with --bits"
            )
        return Precision(name, width, group_size, SCALE_BITS + ZERO_BITS)
    return Precision(name, width)


def weight_bytes_per_param(dtype: str | None, quant_bits: int | None) -> Fraction:
    """Bytes one weight takes: the checkpoint's quantized width if any, else its float dtype."""
    if quant_bits is not None:
        return Fraction(quant_bits, 8)
    if dtype is None:
        raise ConfigError(
            "cannot size the weights: the config names no torch_dtype/dtype; pass "
            "--weights BYTES (e.g. --weights 16GB) instead of --weights auto"
        )
    return Fraction(DTYPE_BITS[dtype], 8)
