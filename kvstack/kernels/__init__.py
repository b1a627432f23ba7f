"""Fast paths for compressed caches: Triton kernels on CUDA, the PyTorch references elsewhere.

Every function here picks its implementation from where the data lives: CUDA tensors
with Triton installed (and a shape the kernels take) go to the kernels in
``triton_*.py``; anything else runs the reference in :mod:`kvstack.kernels.reference`,
which is also what the kernels are tested against. ``KVSTACK_KERNELS=0`` forces the
references (to compare, or to rule the kernels out when debugging). With
``TRITON_INTERPRET=1`` and :data:`ALLOW_CPU` set, the kernels run on CPU tensors through
Triton's interpreter: slow, but the same code, which is how the tests check them on
machines without a GPU.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

from kvstack.errors import InputError
from kvstack.kernels import reference
from kvstack.kernels.layout import PackedRows, Segments

__all__ = [
    "PackedRows", "Segments", "decode_attention", "dequantize", "kernels_available", "quantize", "uses_kernels",
]

KERNEL_BITS = (2, 4, 8)
# CPU tensors go through the kernels only when this is set *and* TRITON_INTERPRET=1: the
# kernel tests flip it, so no other code in the same test session changes path.
ALLOW_CPU = False


@functools.lru_cache(maxsize=1)
def kernels_available() -> bool:
    """Triton is importable (the kernels are optional: ``pip install triton``)."""
    return importlib.util.find_spec("triton") is not None


def _pow2(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def uses_kernels(
    device: torch.device, dim: int, bits: int = 16, group: int = 1, axis: str = "token", attention: bool = False
) -> bool:
    """Whether data of this shape on ``device`` goes through a Triton kernel.

    Attention reads per-channel scales a tile at a time, so there the token groups must
    be a power of two of at least 16 (the smallest matrix-product tile), and each channel
    phase of a packed row (``dim * bits / 8`` channels) must be at least 16 wide.
    """
    if os.environ.get("KVSTACK_KERNELS") == "0" or not kernels_available():
        return False
    if device.type != "cuda" and not (ALLOW_CPU and os.environ.get("TRITON_INTERPRET") == "1"):
        return False
    if not (_pow2(dim) and dim >= 16) or bits not in (*KERNEL_BITS, 16):
        return False
    if bits == 16:
        return True
    if attention and dim * bits // 8 < 16:  # a channel phase (dim / codes per byte) feeds a matrix product
        return False
    if axis == "channel":
        return not attention or (_pow2(group) and group >= 16)
    return _pow2(group) and dim % group == 0


def _check(bits: int, group: int, axis: str, dim: int) -> None:
    if bits not in KERNEL_BITS:
        raise InputError(f"{bits}-bit codes: the kernel formats are {KERNEL_BITS} bits")
    if axis not in ("token", "channel"):
        raise InputError(f"axis={axis!r} is not 'token' or 'channel'")
    if group <= 0 or (axis == "token" and dim % group):
        raise InputError(f"group={group} must be positive and divide dim={dim} for per-token groups")


def quantize(
    x: torch.Tensor, bits: int, group: int, axis: str = "token", sym: bool = False,
    segments: Segments | None = None,
) -> PackedRows:
    """Quantize ``[rows, dim]`` rows into packed codes; ``segments`` keep per-channel groups inside heads."""
    if x.dim() != 2:
        raise InputError(f"quantize takes [rows, dim] rows, got shape {tuple(x.shape)}")
    _check(bits, group, axis, x.shape[1])
    if uses_kernels(x.device, x.shape[1], bits, group, axis):
        from kvstack.kernels import triton_quant

        return triton_quant.quantize(x, bits, group, axis, sym, segments)
    from kvstack.rows.quant import QuantRows

    lengths = segments.lengths.tolist() if (segments is not None and axis == "channel") else None
    return PackedRows.from_quant_rows(QuantRows.quantize(x, bits, group, axis, sym, segments=lengths))


def dequantize(p: PackedRows, segments: Segments | None = None, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """Packed rows back to ``dtype [rows, dim]``."""
    if uses_kernels(p.codes.device, p.dim, p.bits, p.group, p.axis):
        from kvstack.kernels import triton_quant

        return triton_quant.dequantize(p, segments, dtype)
    return reference.dequantize(p, segments).to(dtype)


def decode_attention(
    q: torch.Tensor,
    keys: PackedRows | torch.Tensor,
    values: PackedRows | torch.Tensor,
    segments: Segments,
    tail_k: torch.Tensor | None = None,
    tail_v: torch.Tensor | None = None,
    tail: Segments | None = None,
    scale: float | None = None,
    query_tokens: int = 1,
    **tuning,
) -> torch.Tensor:
    """Attention of ``q [S, M, D]`` over packed (or dense) rows of each segment plus a dense tail.

    ``M`` = query heads per KV head x ``query_tokens``; see
    :func:`kvstack.kernels.triton_decode.decode_attention` for the row order. The tail is
    ``tail_k``/``tail_v`` ``[rows, D]`` placed by the ``tail`` table, or ``[S, t, D]`` with
    no table: the same ``t`` rows count for every segment (a decode cache's new tokens).
    """
    if q.dim() != 3 or q.shape[0] != segments.count:
        raise InputError(f"q must be [segments={segments.count}, rows, dim], got {tuple(q.shape)}")
    if (tail_k is None) != (tail_v is None) or (tail is not None and tail_k is None):
        raise InputError("give tail_k and tail_v together (and a tail table only with them)")
    if tail_k is not None:
        want = 2 if tail is not None else 3
        if tail_k.dim() != want or tail_v.shape != tail_k.shape or (want == 3 and tail_k.shape[0] != q.shape[0]):
            raise InputError(
                f"tail_k/tail_v must be [rows, dim] with a tail table or [segments={q.shape[0]}, t, dim] without, "
                f"got {tuple(tail_k.shape)} and {tuple(tail_v.shape)}"
            )
    if query_tokens > 1 and tail_k is None:
        raise InputError("several new query tokens must be in the tail (they attend causally among themselves)")
    fast = all(
        uses_kernels(q.device, q.shape[-1], *(
            (x.bits, x.group, x.axis) if isinstance(x, PackedRows) else (16, 1, "token")
        ), attention=True)
        for x in (keys, values)
    )
    if fast:
        from kvstack.kernels import triton_decode

        return triton_decode.decode_attention(
            q, keys, values, segments, tail_k, tail_v, tail, scale, query_tokens, **tuning,
        )
    if tail_k is not None and tail is None:  # the reference takes a table
        s, t, d = tail_k.shape
        tail = Segments.from_lengths([t] * s, device=q.device)
        tail_k, tail_v = tail_k.reshape(s * t, d), tail_v.reshape(s * t, d)
    k = keys if isinstance(keys, torch.Tensor) else dequantize(keys, segments, q.dtype)
    v = values if isinstance(values, torch.Tensor) else dequantize(values, segments, q.dtype)
    out = reference.decode_attention(q, k, v, segments, tail_k, tail_v, tail, scale, query_tokens)
    return out.to(q.dtype)
