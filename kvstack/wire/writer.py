"""Write a :class:`KVCache` as a wire stream: plan every array, emit the header, then the chunks.

The plan comes first because the header must describe every array (and carry the entropy
models, fitted on the whole cache) before the first chunk, so that the receiver can check
sizes before allocating and decode each chunk the moment it arrives. Chunks are emitted layer
by layer, so a receiver can use layer 0 while later layers are still on the wire.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from kvstack.errors import InputError
from kvstack.kv import KVCache, KVLayer
from kvstack.kv_batch import KVBatch
from kvstack.rows.encoding import DTYPE_NAMES, dtype_name
from kvstack.wire import colzstd, entropy, jsonvalues
from kvstack.wire.arrays import CODE_CODECS, TENSOR_CODECS, ArraySpec, plan_codes
from kvstack.wire.checksum import crc32c
from kvstack.wire.delta import DELTAS
from kvstack.wire.encodings import Symbols, encoding_for
from kvstack.wire.format import END_INDEX, END_PAYLOAD, FRAME, MAGIC, PREAMBLE, VERSION
from kvstack.wire.hashing import prefix_hash, tokenizer_hash
from kvstack.wire.header import FORMAT_NAME


@dataclass(frozen=True)
class WireOptions:
    """How arrays are coded. ``codes``: packed integer codes (``raw``, ``zstd``, ``colzstd``
    (default: zstd over column-major codes, fast), ``ans``/``range`` (per-channel entropy models:
    a little smaller, several times slower)); ``tensors``: everything else (``raw``, ``zstd``);
    ``delta``: transform of codes ahead of ``colzstd`` (``none``, ``seq``) or ``ans``/``range``
    (also ``anchor``), or ``auto`` = cheapest per array; ``chunk_rows``: rows per chunk (a receiver
    decodes chunk by chunk)."""

    codes: str = "colzstd"
    tensors: str = "zstd"
    delta: str = "auto"
    chunk_rows: int = 1024
    zstd_level: int = 3

    def __post_init__(self) -> None:
        if self.codes not in CODE_CODECS:
            raise InputError(f"codes={self.codes!r}: pick one of {', '.join(CODE_CODECS)}")
        if self.tensors not in TENSOR_CODECS:
            raise InputError(f"tensors={self.tensors!r}: pick one of {', '.join(TENSOR_CODECS)}")
        if self.delta not in (*DELTAS, "auto"):
            raise InputError(f"delta={self.delta!r}: pick one of {', '.join((*DELTAS, 'auto'))}")
        if self.codes == "colzstd" and self.delta not in (*colzstd.DELTAS, "auto"):
            raise InputError(f"delta={self.delta!r} is for codes='ans'/'range'; colzstd takes none, seq or auto")
        if not isinstance(self.chunk_rows, int) or not 1 <= self.chunk_rows <= 1 << 24:
            raise InputError(f"chunk_rows={self.chunk_rows!r}: give a whole number of rows, 1 to 16777216")
        if not isinstance(self.zstd_level, int) or not -7 <= self.zstd_level <= 22:
            raise InputError(f"zstd_level={self.zstd_level!r}: zstd levels run from -7 to 22")


@dataclass
class Plan:
    header: dict
    arrays: list[tuple[ArraySpec, torch.Tensor]] = field(default_factory=list)
    chunks: list[tuple[int, int, int]] = field(default_factory=list)


class _Planner:
    def __init__(self, options: WireOptions) -> None:
        self.options = options
        self.plan = Plan(header={})
        self.seen: dict[int, int] = {}  # id(tensor) -> array index: a tensor shared by layers is stored once

    def array(self, name: str, value: torch.Tensor | Symbols | None) -> int | None:
        if value is None:
            return None
        source = value.packed if isinstance(value, Symbols) else value
        if id(source) in self.seen:
            index = self.seen[id(source)]
            self.plan.arrays[index][0].shared = True
            return index
        opts = self.options
        if isinstance(value, Symbols):
            tensor = value.packed.detach().cpu().contiguous()
            spec = ArraySpec(name, torch.uint8, tuple(tensor.shape), opts.codes, value.bits, value.dim)
            if opts.codes in entropy.ENTROPY_CODECS:
                spec.delta, spec.model = plan_codes(tensor, value.bits, value.dim, opts.chunk_rows, opts.delta)
            elif opts.codes == "colzstd":
                spec.delta = colzstd.choose_delta(tensor.numpy(), opts.chunk_rows, opts.delta)
        else:
            if not isinstance(value, torch.Tensor) or value.dtype not in DTYPE_NAMES or not 1 <= value.dim() <= 2:
                raise InputError(f"{name}: the wire format stores 1-D/2-D tensors of {', '.join(DTYPE_NAMES.values())}")
            tensor = value.detach().cpu().contiguous()
            spec = ArraySpec(name, tensor.dtype, tuple(tensor.shape), opts.tensors)
        index = len(self.plan.arrays)
        self.seen[id(source)] = index
        self.plan.arrays.append((spec, tensor))
        for start in range(0, spec.rows, opts.chunk_rows):
            self.plan.chunks.append((index, start, min(start + opts.chunk_rows, spec.rows)))
        return index

    def node(self, enc, name: str, depth: int = 0) -> dict:
        if depth > 8:
            raise InputError(f"{name}: encodings nest more than 8 levels deep")
        coding = encoding_for(enc)
        parts = coding.parts(enc)
        return {
            "kind": coding.kind,
            "meta": jsonvalues.dump(parts.meta, f"{name}.meta"),
            "arrays": {key: self.array(f"{name}.{key}", value) for key, value in parts.arrays.items()},
            "children": {key: self.node(child, f"{name}.{key}", depth + 1) for key, child in parts.children.items()},
        }

    def layer(self, i: int, layer: KVLayer) -> dict:
        name = f"layers.{i}"
        plain = {k: v for k, v in layer.meta.items() if not isinstance(v, torch.Tensor)}
        tensors = {k: v for k, v in layer.meta.items() if isinstance(v, torch.Tensor)}
        return {
            "lengths": [int(n) for n in layer.lengths],
            "sliding_window": layer.sliding_window,
            "meta": jsonvalues.dump(plain, f"{name}.meta"),
            "meta_arrays": {k: self.array(f"{name}.meta.{k}", v) for k, v in tensors.items()},
            "positions": self.array(f"{name}.positions", layer.positions),
            "keys": self.node(layer.keys, f"{name}.keys"),
            "values": self.node(layer.values, f"{name}.values"),
        }


def check_one_sequence(cache) -> None:
    """InputError unless ``cache`` is one :class:`KVCache`: a file (or stream) holds one sequence."""
    if isinstance(cache, KVBatch):
        raise InputError(
            f"a wire file holds one sequence and this is a batch of {len(cache)}: save one sequence at a "
            "time, e.g. for i in range(len(batch)): kvstack.save(batch[i], f'doc{i}.kvw')"
        )
    if not isinstance(cache, KVCache):
        raise InputError(f"expected a kvstack.KVCache (from kvstack.compress), got {type(cache).__name__}")


def build_plan(cache: KVCache, options: WireOptions, tokenizer=None) -> Plan:
    """Describe every array of ``cache`` and fit the entropy models: all the header needs."""
    check_one_sequence(cache)
    if sys.byteorder != "little":
        raise InputError("the wire format is written on little-endian machines only")
    planner = _Planner(options)
    ids = cache.context_ids.detach().reshape(-1)
    header = {
        "format": FORMAT_NAME,
        "version": VERSION,
        "model_fingerprint": cache.model_fingerprint,
        "tokenizer": None if tokenizer is None else tokenizer_hash(tokenizer),
        "recipe": cache.recipe,
        "dense_dtype": dtype_name(cache.dense_dtype),
        "context_tokens": int(ids.numel()),
        "context_sha256": prefix_hash(ids),
        "dense_layout": [[int(h), int(d), None if w is None else int(w)] for h, d, w in cache.dense_layout],
        "stats": jsonvalues.plain_stats(cache.stats),
        "encoded_nbytes": int(cache.nbytes),
        "context_ids": planner.array("context_ids", ids),
        "layers": [planner.layer(i, layer) for i, layer in enumerate(cache.layers)],
    }
    header["arrays"] = [spec.to_json() for spec, _ in planner.plan.arrays]
    header["chunks"] = [list(c) for c in planner.plan.chunks]
    planner.plan.header = header
    return planner.plan


def encode_stream(cache: KVCache, *, tokenizer=None, options: WireOptions | None = None, **kwargs) -> Iterator[bytes]:
    """Yield the wire bytes of ``cache`` piece by piece (header first, then chunk frames).

    Keyword arguments are :class:`WireOptions` fields (``codes="colzstd"``, ``delta="auto"``, ...).
    ``tokenizer`` records a hash of its vocabulary, checked again by :func:`kvstack.wire.load`.
    """
    opts = options or WireOptions(**kwargs)
    plan = build_plan(cache, opts, tokenizer)
    header = json.dumps(plan.header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    first = PREAMBLE.pack(MAGIC, VERSION, 0, len(header)) + header + crc32c(header).to_bytes(4, "little")
    total = len(first)
    yield first
    for index, (array, start, stop) in enumerate(plan.chunks):
        spec, tensor = plan.arrays[array]
        payload = spec.encode_block(tensor[start:stop], opts.zstd_level)
        frame = FRAME.pack(index, len(payload), crc32c(payload))
        total += len(frame) + len(payload)
        yield frame
        yield payload
    end = END_PAYLOAD.pack(total)
    yield FRAME.pack(END_INDEX, len(end), crc32c(end)) + end


def encode(cache: KVCache, **kwargs) -> bytes:
    """The whole wire stream of ``cache`` as one ``bytes`` (see :func:`encode_stream`)."""
    return b"".join(encode_stream(cache, **kwargs))


__all__ = ["WireOptions", "build_plan", "encode", "encode_stream"]
