"""Wire encodings of the quantized containers: :class:`QuantRows` (packed codes + fp16 scales),
:class:`SplitRows` (KIVI: quantized rows + a dense residual, in run order) and :class:`HadamardRows`
(rows quantized in a rotated basis: the inner encoding plus the rotation's seed, nothing else)."""

from __future__ import annotations

import torch

from kvstack.kv import DenseRows
from kvstack.stages.quant_pack import SUPPORTED_BITS, packed_width
from kvstack.stages.quant_rotate import HadamardRows
from kvstack.stages.quant_rows import AXES, QuantRows
from kvstack.stages.quant_split import SplitRows
from kvstack.wire.encodings import Parts, Symbols, need, need_int, need_tensor, register_encoding
from kvstack.wire.format import DTYPES, dtype_name

_FLOATS = {k for k, v in DTYPES.items() if v.is_floating_point}


def _quant_parts(q: QuantRows) -> Parts:
    meta = {
        "bits": q.bits,
        "group": q.group,
        "axis": q.axis,
        "dim": q.dim,
        "out_dtype": dtype_name(q.out_dtype),
        "segments": None if q.segments is None else list(q.segments),
    }
    return Parts(meta=meta, arrays={"codes": Symbols(q.codes, q.bits, q.dim), "scales": q.scales, "zeros": q.zeros})


def _quant_build(meta: dict, arrays: dict, children: dict) -> QuantRows:
    bits = meta.get("bits")
    need(bits in SUPPORTED_BITS, f"quantized rows with {bits!r} bits")
    axis = meta.get("axis")
    need(axis in AXES, f"quantization axis {axis!r}")
    dim = need_int(meta.get("dim"), "quantized dim", 1, 1 << 20)
    group = need_int(meta.get("group"), "quantization group", 1, 1 << 40)
    out = meta.get("out_dtype")
    need(isinstance(out, str) and out in _FLOATS, f"output dtype {out!r}")
    codes = arrays.get("codes")
    need(codes is not None and codes.dim() == 2, "quantized codes must be a 2-D tensor")
    n = int(codes.shape[0])
    need_tensor(codes, "codes", torch.uint8, (n, packed_width(dim, bits)))
    segments = meta.get("segments")
    if axis == "token":
        need(segments is None, "token-axis rows carry no segments")
        need(dim % group == 0, f"group {group} does not divide dim {dim}")
        shape = (n, dim // group)
    else:
        need(isinstance(segments, list) and len(segments) <= 1 << 20, "channel-axis rows need a segments list")
        segments = tuple(need_int(s, "segment length") for s in segments)
        need(sum(segments) == n, f"segments cover {sum(segments)} rows, codes have {n}")
        shape = (sum(-(-s // group) for s in segments), dim)
    scales = need_tensor(arrays.get("scales"), "scales", torch.float16, shape)
    zeros = arrays.get("zeros")
    if zeros is not None:
        need_tensor(zeros, "zeros", torch.float16, shape)
    return QuantRows(codes, scales, zeros, bits, group, axis, dim, DTYPES[out], segments)


def _split_parts(s: SplitRows) -> Parts:
    return Parts(meta={"runs": [[bool(d), int(c)] for d, c in s.runs]}, children={"quant": s.quant, "dense": s.dense})


def _split_build(meta: dict, arrays: dict, children: dict) -> SplitRows:
    runs = meta.get("runs")
    need(isinstance(runs, list) and len(runs) <= 1 << 24, "split rows need a runs list")
    clean = []
    for run in runs:
        need(isinstance(run, list) and len(run) == 2 and isinstance(run[0], bool), f"bad run {run!r}")
        clean.append((run[0], need_int(run[1], "run length", 1)))
    quant, dense = children.get("quant"), children.get("dense")
    need(isinstance(quant, QuantRows) and isinstance(dense, DenseRows), "split rows need quant and dense parts")
    n_dense = sum(c for d, c in clean if d)
    need(n_dense == dense.shape[0], f"runs name {n_dense} dense rows, the dense part has {dense.shape[0]}")
    need(sum(c for d, c in clean if not d) == quant.shape[0], "runs do not match the quantized rows")
    need(dense.shape[1] == quant.dim, "dense and quantized rows differ in width")
    need(dense.dtype == quant.dtype, "dense and quantized rows differ in dtype")
    return SplitRows(quant, dense, tuple(clean))


def _hadamard_parts(h: HadamardRows) -> Parts:
    return Parts(meta={"seed": h.seed, "out_dtype": dtype_name(h.out_dtype)}, children={"inner": h.inner})


def _hadamard_build(meta: dict, arrays: dict, children: dict) -> HadamardRows:
    seed = need_int(meta.get("seed"), "rotation seed", 0, (1 << 63) - 1)
    out = meta.get("out_dtype")
    need(isinstance(out, str) and out in _FLOATS, f"output dtype {out!r}")
    inner = children.get("inner")
    need(inner is not None and hasattr(inner, "decode"), "rotated rows need their inner rows")
    width = int(inner.shape[1])
    need(width >= 1 and width & (width - 1) == 0, f"rotated rows of width {width}: not a power of two")
    return HadamardRows(inner, seed, DTYPES[out])


register_encoding(QuantRows, "quant", _quant_parts, _quant_build)
register_encoding(SplitRows, "split", _split_parts, _split_build)
register_encoding(HadamardRows, "hadamard", _hadamard_parts, _hadamard_build)
