"""One array on the wire: its header description, and how a block of its rows is coded.

Non-code tensors (scales, dense rows, positions, token ids) are ``raw`` little-endian bytes or
``zstd``-compressed. Packed integer codes may also be ``colzstd``-coded (column-major packed
bytes through zstd, :mod:`kvstack.wire.colzstd`: fast) or ``ans``/``range`` entropy coded (the
block is unpacked to one symbol per element, optionally delta-transformed along rows, and
coded with the array's channel-group model: smallest, slow). Every size is derived from the validated shape,
so decoding allocates exactly what the header announced and nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from kvstack.errors import CacheFormatError
from kvstack.rows.encoding import DTYPES, dtype_name
from kvstack.rows.pack import SUPPORTED_BITS, packed_width
from kvstack.wire import bitpack, colzstd, entropy, zstdio
from kvstack.wire import delta as deltas
from kvstack.wire.deps import require
from kvstack.wire.format import Limits

TENSOR_CODECS = ("raw", "zstd")
_ITEMSIZE = {dtype: torch.empty((), dtype=dtype).element_size() for dtype in DTYPES.values()}
CODE_CODECS = TENSOR_CODECS + ("colzstd", *entropy.ENTROPY_CODECS)


@dataclass
class ArraySpec:
    """What the header says about one array; ``bits``/``dim`` are set for packed codes only."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    codec: str = "raw"
    bits: int | None = None
    dim: int | None = None
    delta: str = "none"
    model: entropy.Model | None = None
    shared: bool = False  # referenced from several places (e.g. a basis shared by layers), stored once

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def row_bytes(self) -> int:
        width = 1
        for s in self.shape[1:]:
            width *= s
        return width * _ITEMSIZE[self.dtype]

    @property
    def nbytes(self) -> int:
        return self.rows * self.row_bytes

    def to_json(self) -> dict:
        out = {"name": self.name, "dtype": dtype_name(self.dtype), "shape": list(self.shape), "codec": self.codec}
        if self.shared:
            out["shared"] = True
        if self.bits is not None:
            out.update(bits=self.bits, dim=self.dim)
        if self.codec in entropy.ENTROPY_CODECS:
            out.update(delta=self.delta, model=self.model.to_json())
        elif self.codec == "colzstd":
            out["delta"] = self.delta
        return out

    @classmethod
    def from_json(cls, obj, limits: Limits) -> ArraySpec:
        def bad(what: str) -> CacheFormatError:
            return CacheFormatError(f"corrupt cache: array {what}")

        if not isinstance(obj, dict):
            raise bad("entry is not an object")
        name, dtype, shape, codec = obj.get("name"), obj.get("dtype"), obj.get("shape"), obj.get("codec")
        if not isinstance(name, str) or len(name) > 256:
            raise bad("name")
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise bad(f"{name}: dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        if not isinstance(shape, list) or not 1 <= len(shape) <= 2:
            raise bad(f"{name}: shape {shape!r} must have 1 or 2 dimensions")
        for s in shape:
            if not isinstance(s, int) or isinstance(s, bool) or s < 0:
                raise bad(f"{name}: shape {shape!r}")
        if shape[0] > limits.max_rows or (len(shape) == 2 and shape[1] > limits.max_width):
            raise bad(f"{name}: shape {shape} beyond the reader's limits")
        spec = cls(name, DTYPES[dtype], tuple(shape), codec)
        if "shared" in obj:
            if obj["shared"] is not True:
                raise bad(f"{name}: shared must be true when present")
            spec.shared = True
        if "bits" in obj:
            bits, dim = obj.get("bits"), obj.get("dim")
            if bits not in SUPPORTED_BITS or not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
                raise bad(f"{name}: codes of {bits!r} bits x {dim!r}")
            if dim > limits.max_head_dim:  # also bounds an entropy model's groups (one per channel at most)
                raise bad(f"{name}: codes of {dim} channels, over the reader's head_dim limit of {limits.max_head_dim}")
            if spec.dtype != torch.uint8 or len(shape) != 2 or shape[1] != packed_width(dim, bits):
                raise bad(f"{name}: packed codes must be uint8 [rows, {packed_width(dim, bits)}]")
            spec.bits, spec.dim = bits, dim
        allowed = CODE_CODECS if spec.bits is not None else TENSOR_CODECS
        if codec not in allowed:
            raise bad(f"{name}: codec {codec!r} is not one of {', '.join(allowed)}")
        if codec in entropy.ENTROPY_CODECS:
            if obj.get("delta") not in deltas.DELTAS:
                raise bad(f"{name}: delta {obj.get('delta')!r}")
            spec.delta = obj["delta"]
            spec.model = entropy.Model.from_json(obj.get("model"), spec.dim, 1 << spec.bits)
        elif codec == "colzstd":
            if obj.get("delta") not in colzstd.DELTAS:
                raise bad(f"{name}: colzstd delta {obj.get('delta')!r}")
            spec.delta = obj["delta"]
        return spec

    # --- coding one block of rows --------------------------------------------------------------
    def encode_block(self, block: torch.Tensor, zstd_level: int = 3) -> bytes:
        if self.codec in entropy.ENTROPY_CODECS:
            symbols = deltas.forward(bitpack.unpack(block.numpy(), self.bits, self.dim), self.delta, 1 << self.bits)
            return entropy.encode(symbols, self.model, self.codec)
        if self.codec == "colzstd":
            return colzstd.encode(block.numpy(), self.delta)
        raw = tensor_bytes(block)
        if self.codec == "zstd":
            zstandard = require("zstandard")
            return zstandard.ZstdCompressor(level=zstd_level).compress(raw)
        return raw

    def decode_block(self, payload: bytes | memoryview, rows: int) -> np.ndarray:
        """The block's ``rows`` rows as a flat ``uint8`` array of exactly ``rows * row_bytes`` bytes."""
        expected = rows * self.row_bytes
        if self.codec in entropy.ENTROPY_CODECS:
            symbols = entropy.decode(bytes(payload), rows, self.model, self.codec)
            codes = deltas.inverse(symbols, self.delta, 1 << self.bits)
            out = bitpack.pack(codes, self.bits).reshape(-1)
        elif self.codec == "colzstd":
            out = colzstd.decode(payload, rows, self.row_bytes, self.delta)
        elif self.codec == "zstd":
            out = np.frombuffer(zstdio.decompress(payload, expected, f"{self.name}: zstd block"), np.uint8)
        else:
            out = np.frombuffer(payload, dtype=np.uint8)
        if out.size != expected:
            raise CacheFormatError(f"corrupt cache: {self.name}: block holds {out.size} bytes, expected {expected}")
        return out


def tensor_bytes(t: torch.Tensor) -> bytes:
    """A tensor's elements as little-endian bytes (any dtype, bfloat16 included)."""
    t = t.detach().cpu().contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def plan_codes(packed: torch.Tensor, bits: int, dim: int, chunk_rows: int, delta: str) -> tuple[str, entropy.Model]:
    """Pick the delta transform and fit the model over the chunking the writer will use (deltas
    restart at each chunk). ``auto`` compares every transform on up to 4 chunks spread over the
    array, then fits the winner on all of it (any model decodes exactly; fitting on all of it
    just codes best)."""
    alphabet = 1 << bits
    packed_np = packed.numpy()
    starts = list(range(0, packed.shape[0], chunk_rows))

    def hist(mode: str, chosen: list[int]) -> np.ndarray:
        out = np.zeros((dim, alphabet), dtype=np.int64)
        for start in chosen:
            codes = bitpack.unpack(packed_np[start : start + chunk_rows], bits, dim)
            out += entropy.channel_histogram(deltas.forward(codes, mode, alphabet), alphabet)
        return out

    mode = delta
    if delta == "auto":
        sample = starts[:: -(-len(starts) // 4)] if starts else []
        costs = {m: entropy.estimated_bits(h, entropy.fit(h).width)
                 for m, h in ((m, hist(m, sample)) for m in deltas.DELTAS)}
        mode = min(costs, key=costs.get)
    return mode, entropy.fit(hist(mode, starts))
