"""Parse and validate a stream's JSON header before anything is allocated.

Every index, length and shape is checked here (types, ranges, that chunks tile each array in
order, that every array belongs to exactly one place, that the total fits the reader's
limits), so the rest of the reader can trust the header's arithmetic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch

from kvstack.errors import CacheFormatError
from kvstack.rows.encoding import DTYPES
from kvstack.wire import jsonvalues
from kvstack.wire.arrays import ArraySpec
from kvstack.wire.format import READABLE_VERSIONS, Limits

FORMAT_NAME = "kvstack-wire"
_MAX_NODE_DEPTH = 8


def _bad(what: str) -> CacheFormatError:
    return CacheFormatError(f"corrupt cache header: {what}")


def _int(value: Any, what: str, lo: int = 0, hi: int = 1 << 62) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise _bad(f"{what}={value!r}")
    return value


def _str(value: Any, what: str, limit: int = 1 << 20) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise _bad(f"{what} must be a string")
    return value


@dataclass
class Header:
    """The validated header: cache-level facts, arrays, chunks, and each layer's description."""

    raw: dict
    arrays: list[ArraySpec]
    chunks: list[tuple[int, int, int]]
    layers: list[dict]
    context_array: int
    layer_last_chunk: list[int] = field(default_factory=list)
    array_last_chunk: list[int] = field(default_factory=list)

    @property
    def model_fingerprint(self) -> str:
        return self.raw["model_fingerprint"]

    @property
    def tokenizer(self) -> str | None:
        return self.raw["tokenizer"]

    @property
    def context_tokens(self) -> int:
        return self.raw["context_tokens"]

    @property
    def context_sha256(self) -> str:
        return self.raw["context_sha256"]

    @property
    def recipe(self) -> str:
        return self.raw["recipe"]

    @property
    def dense_dtype(self) -> torch.dtype:
        return DTYPES[self.raw["dense_dtype"]]


def parse_header(data: bytes, limits: Limits) -> Header:
    """Validate the header bytes (already CRC-checked) and return a :class:`Header`."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _bad(f"not JSON ({exc})") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
        raise _bad("this is not a kvstack wire stream")
    if raw.get("version") not in READABLE_VERSIONS:
        raise CacheFormatError(
            f"cache header says format version {raw.get('version')!r}; this kvstack reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}. "
            "Use the kvstack version that wrote it, or re-save the cache with this one."
        )
    _str(raw.get("model_fingerprint"), "model_fingerprint", 256)
    if raw.get("tokenizer") is not None:
        _str(raw["tokenizer"], "tokenizer", 256)
    _str(raw.get("recipe"), "recipe")
    if not isinstance(raw.get("dense_dtype"), str) or raw["dense_dtype"] not in DTYPES:
        raise _bad(f"dense_dtype {raw.get('dense_dtype')!r}")
    _int(raw.get("context_tokens"), "context_tokens", 0, limits.max_rows)
    _str(raw.get("context_sha256"), "context_sha256", 64)
    _int(raw.get("encoded_nbytes"), "encoded_nbytes")
    layout = raw.get("dense_layout")
    if not isinstance(layout, list) or len(layout) > limits.max_layers:
        raise _bad("dense_layout must be a list")
    for entry in layout:
        if not isinstance(entry, list) or len(entry) != 3:
            raise _bad(f"dense_layout entry {entry!r}")
        _int(entry[0], "dense_layout heads", 0, 1 << 20)
        _int(entry[1], "dense_layout head_dim", 0, limits.max_head_dim)
        if entry[2] is not None:
            _int(entry[2], "dense_layout window", 1)
    if not isinstance(raw.get("stats"), dict):
        raise _bad("stats must be an object")
    raw["stats"] = jsonvalues.load(raw["stats"], max_items=limits.max_json_items, where="stats")

    arrays_raw = raw.get("arrays")
    if not isinstance(arrays_raw, list) or len(arrays_raw) > limits.max_arrays:
        raise _bad("arrays must be a list within the reader's limits")
    arrays = [ArraySpec.from_json(a, limits) for a in arrays_raw]
    total = sum(a.nbytes for a in arrays)
    if total > limits.max_total_bytes:
        raise CacheFormatError(
            f"cache would decode to {total} bytes, over this reader's limit of {limits.max_total_bytes}; "
            "raise Limits.max_total_bytes if you trust the source"
        )

    chunks = _chunks(raw.get("chunks"), arrays, limits)
    owner: dict[int, str] = {}

    def claim(index: Any, where: str, allow_none: bool = False) -> int | None:
        if index is None and allow_none:
            return None
        index = _int(index, f"{where} array index", 0, len(arrays) - 1)
        if index in owner and not arrays[index].shared:
            raise _bad(f"array {index} used by both {owner[index]} and {where}")
        owner[index] = where
        return index

    context_array = claim(raw.get("context_ids"), "context_ids")
    ids_spec = arrays[context_array]
    if len(ids_spec.shape) != 1 or ids_spec.dtype.is_floating_point or ids_spec.rows != raw["context_tokens"]:
        raise _bad("context_ids must be a 1-D integer array of context_tokens entries")

    layers_raw = raw.get("layers")
    if not isinstance(layers_raw, list) or len(layers_raw) > limits.max_layers:
        raise _bad("layers must be a list within the reader's limits")
    layers = [_layer(i, entry, claim, limits) for i, entry in enumerate(layers_raw)]
    if len(owner) != len(arrays):
        raise _bad("some arrays belong to no layer")

    array_last = [-1] * len(arrays)
    for index, (a, _, _) in enumerate(chunks):
        array_last[a] = index
    layer_last = [max((array_last[a] for a in layer["_arrays"]), default=-1) for layer in layers]
    return Header(raw, arrays, chunks, layers, context_array, layer_last, array_last)


def _chunks(value: Any, arrays: list[ArraySpec], limits: Limits) -> list[tuple[int, int, int]]:
    if not isinstance(value, list) or len(value) > limits.max_chunks:
        raise _bad("chunks must be a list within the reader's limits")
    filled = [0] * len(arrays)
    out = []
    for entry in value:
        if not isinstance(entry, list) or len(entry) != 3:
            raise _bad(f"chunk entry {entry!r}")
        a = _int(entry[0], "chunk array", 0, len(arrays) - 1)
        start = _int(entry[1], "chunk start", 0, limits.max_rows)
        stop = _int(entry[2], "chunk stop", 0, limits.max_rows)
        if start != filled[a] or not start < stop <= arrays[a].rows:
            raise _bad(f"chunk {entry} does not continue array {a} at row {filled[a]}")
        if (stop - start) * arrays[a].row_bytes > limits.max_chunk_bytes:
            raise _bad(f"chunk {entry} decodes to more than {limits.max_chunk_bytes} bytes")
        filled[a] = stop
        out.append((a, start, stop))
    for a, spec in enumerate(arrays):
        if filled[a] != spec.rows:
            raise _bad(f"array {spec.name} has {spec.rows} rows but its chunks cover {filled[a]}")
    return out


def _layer(i: int, entry: Any, claim, limits: Limits) -> dict:
    where = f"layers[{i}]"
    if not isinstance(entry, dict):
        raise _bad(f"{where} must be an object")
    lengths = entry.get("lengths")
    if not isinstance(lengths, list) or len(lengths) > 1 << 16:
        raise _bad(f"{where}.lengths must be a list")
    lengths = [_int(n, f"{where}.lengths") for n in lengths]
    window = entry.get("sliding_window")
    if window is not None:
        _int(window, f"{where}.sliding_window", 1)
    meta = entry.get("meta")
    meta_arrays = entry.get("meta_arrays")
    if not isinstance(meta, dict) or not isinstance(meta_arrays, dict):
        raise _bad(f"{where}.meta must be an object")
    arrays: list[int] = []

    def take(index: Any, name: str, allow_none: bool = False) -> int | None:
        got = claim(index, name, allow_none)
        if got is not None:
            arrays.append(got)
        return got

    out = {
        "lengths": tuple(lengths),
        "sliding_window": window,
        "meta": jsonvalues.load(meta, max_items=limits.max_json_items, where=f"{where}.meta"),
        "meta_arrays": {_str(k, "meta key", 256): take(v, f"{where}.meta.{k}") for k, v in meta_arrays.items()},
        "positions": take(entry.get("positions"), f"{where}.positions", allow_none=True),
        "keys": _node(entry.get("keys"), f"{where}.keys", take, 0, limits),
        "values": _node(entry.get("values"), f"{where}.values", take, 0, limits),
    }
    out["_arrays"] = arrays
    return out


def _node(node: Any, where: str, take, depth: int, limits: Limits) -> dict:
    if depth > _MAX_NODE_DEPTH:
        raise _bad(f"{where} nests too deep")
    if not isinstance(node, dict) or set(node) != {"kind", "meta", "arrays", "children"}:
        raise _bad(f"{where} must be an encoding node")
    if not isinstance(node["meta"], dict) or not isinstance(node["arrays"], dict):
        raise _bad(f"{where}.meta/arrays must be objects")
    if not isinstance(node["children"], dict):
        raise _bad(f"{where}.children must be an object")
    return {
        "kind": _str(node["kind"], f"{where}.kind", 64),
        "meta": jsonvalues.load(node["meta"], max_items=limits.max_json_items, where=f"{where}.meta"),
        "arrays": {_str(k, "array name", 64): take(v, f"{where}.{k}", True) for k, v in node["arrays"].items()},
        "children": {_str(k, "child name", 64): _node(v, f"{where}.{k}", take, depth + 1, limits)
                     for k, v in node["children"].items()},
    }
