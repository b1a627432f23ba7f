"""One LMCache KV chunk <-> a fixed-size kvstack frame of quantized codes (no LMCache import here).

LMCache (0.5.6, multi-process mode) stores the KV of ``T`` tokens of all layers as one object of
shape ``[2, num_layers, T, num_kv_heads * head_dim]`` (keys, values), in the engine's dtype. A
:class:`ChunkCodec` runs a kvstack quantization recipe on such a chunk exactly as
:func:`kvstack.compress` runs it on a whole context - each layer becomes a :class:`KVLayer` of
``num_kv_heads`` heads of ``T`` rows, and the recipe's own stages quantize it - so a chunk
aligned to the recipe's groups decodes to the very values kvstack's own cache holds.

Why a fixed size: LMCache 0.5.6 allocates a serializer's output buffer from
``estimate_serialized_size`` before it runs and stores the whole buffer, so the estimate must
be exact to be tight. Quantized containers have sizes that depend only on the chunk's shape, so
the codec encodes a synthetic chunk of each layout once (a *template*) and every real chunk of
that layout has exactly its size; the template also gives the reader every shape and the
JSON-able ``meta`` (bit widths, groups, run lengths), so the frame carries only numbers.

Frame (little-endian)::

    header  magic b"KVLM" | version u16 | entries u16 | fingerprint u32 | payload bytes u32
    table   one entry per array: kind u8 (0 raw, 1 packed codes) | bits u8 | 0 u16 | row width u32 | bytes u32
    payload the arrays' bytes, in table order

The table lets a store (the ``plugin`` adapter, :mod:`.packing`) entropy-code the packed codes
without knowing the recipe. The fingerprint (CRC32 of the canonical recipe - every default written
out - and the layout) makes a frame read back under another recipe, another meaning of the same
recipe text (a default that moved) or another layout a :class:`CacheFormatError`, never silently
wrong KV. Version 2: version 1 hashed the recipe's text, so its frames are refused by version.
"""

from __future__ import annotations

import json
import struct
import threading
import zlib
from dataclasses import dataclass

import torch

from kvstack.errors import CacheFormatError, ConfigError, RecipeError
from kvstack.grammar.syntax import canonical_recipe
from kvstack.kv import KVCache, KVLayer
from kvstack.stack import Recipe, StageContext
from kvstack.wire.encodings import Symbols, encoding_for

MAGIC = b"KVLM"
VERSION = 2  # 1: fingerprints of the recipe text (refused: a default may have moved since)
HEADER = struct.Struct("<4sHHII")
ENTRY = struct.Struct("<BBHII")
KIND_RAW, KIND_CODES = 0, 1
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# Families whose stages keep every token and every channel: LMCache needs each chunk back whole.
KEEPS_ROWS = frozenset({"quantize", "misc"})


@dataclass(frozen=True)
class Layout:
    """An LMCache KV chunk's layout: ``[2, layers, tokens, hidden]`` in ``dtype``."""

    layers: int
    tokens: int
    hidden: int
    dtype: torch.dtype

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (2, self.layers, self.tokens, self.hidden)


def dtype_of(name: object) -> torch.dtype:
    """``"bfloat16"`` (or a torch dtype) -> torch dtype; ConfigError naming the dtypes kvstack encodes."""
    if isinstance(name, torch.dtype) and name in DTYPES.values():
        return name
    if isinstance(name, str) and name.removeprefix("torch.") in DTYPES:
        return DTYPES[name.removeprefix("torch.")]
    raise ConfigError(
        f"kvstack cannot encode LMCache chunks of dtype {name!r}; it encodes {', '.join(DTYPES)} "
        "(fp8 chunks are already 1 byte per element: use LMCache's own serde for them)"
    )


def layout_of(shapes: list, dtypes: list) -> Layout:
    """Check an LMCache ``MemoryLayoutDesc`` (its shapes and dtypes) and return its :class:`Layout`."""
    if len(shapes) != 1 or len(dtypes) != 1:
        raise ConfigError(
            f"kvstack encodes LMCache objects of one KV tensor; this layout has {len(shapes)} "
            "(multi-group layouts are not supported: configure kvstack's serde on a single-group model)"
        )
    shape, dtype = tuple(int(s) for s in shapes[0]), dtype_of(dtypes[0])
    if len(shape) == 3:
        raise ConfigError(
            f"LMCache chunk shape {list(shape)} is single-plane (MLA or fused K/V); kvstack quantizes "
            "separate keys and values [2, layers, tokens, hidden]: use LMCache's fp8 serde for this model"
        )
    if len(shape) != 4 or shape[0] != 2 or min(shape) < 1:
        raise ConfigError(
            f"LMCache chunk shape {list(shape)} is not [2, layers, tokens, hidden] with every size >= 1"
        )
    return Layout(shape[1], shape[2], shape[3], dtype)


def _walk(enc) -> list:
    """Every array of an encoded container (tensors, Symbols, None), nested children included, in a
    fixed order: the order the frame's table lists them."""
    parts = encoding_for(enc).parts(enc)
    out = [parts.arrays[name] for name in sorted(parts.arrays)]
    for name in sorted(parts.children):
        out.extend(_walk(parts.children[name]))
    return out


def _rebuild(template, arrays: list):
    """``template`` with its arrays replaced, in :func:`_walk`'s order, by the tensors ``arrays`` yields."""
    encoding = encoding_for(template)
    parts = encoding.parts(template)
    new = {name: (None if parts.arrays[name] is None else next(arrays)) for name in sorted(parts.arrays)}
    children = {name: _rebuild(parts.children[name], arrays) for name in sorted(parts.children)}
    return encoding.build(parts.meta, new, children)


def _signature(enc) -> list:
    """What must not depend on the data: every array's shape and dtype, and every container's meta."""
    parts = encoding_for(enc).parts(enc)
    sig: list = [type(enc).__name__, json.dumps(parts.meta, sort_keys=True, default=str)]
    for name in sorted(parts.arrays):
        a = parts.arrays[name]
        t = a.packed if isinstance(a, Symbols) else a
        sig.append(None if t is None else (name, tuple(t.shape), str(t.dtype)))
    for name in sorted(parts.children):
        sig.extend(_signature(parts.children[name]))
    return sig


@dataclass(frozen=True)
class _Template:
    layers: list  # per layer: (keys container, values container) of a synthetic chunk
    entries: list  # (kind, bits, width, nbytes) per array
    nbytes: int  # the whole frame


class ChunkCodec:
    """Quantize LMCache KV chunks with a kvstack recipe into fixed-size frames, and back.

    ``head_dim`` splits a chunk's hidden size into KV heads (LMCache flattens them): per-head
    groups and the Walsh-Hadamard rotation work on heads. Recipes may only quantize (int8, int4,
    int2, kivi, ... and layer overrides such as ``int4 > int8@layer0``); a stage that drops tokens
    or channels is a RecipeError, since LMCache must get every chunk back whole.
    """

    def __init__(self, recipe: str = "int4", head_dim: int = 64) -> None:
        if not isinstance(head_dim, int) or isinstance(head_dim, bool) or head_dim < 1:
            raise ConfigError(f"head_dim={head_dim!r} must be a positive int: the model's per-head key width")
        self.recipe = Recipe.parse(recipe)
        for stage in self.recipe.stages:
            if stage.family not in KEEPS_ROWS or stage.needs or stage.needs_question:
                raise RecipeError(
                    f"'{stage.spec()}' ({stage.family}) cannot run inside LMCache: a chunk must come back "
                    "with every token and channel, so use quantizers only (int8, int4, int2, kivi:2, ...)"
                )
        self.head_dim = head_dim
        self._canonical = f"{canonical_recipe(recipe)};head_dim={head_dim}"  # what the frames' bytes mean
        self._templates: dict[Layout, _Template] = {}
        self._lock = threading.Lock()
        # Dry run on one layer of two group-aligned tokens' worth: bad group sizes, rot on a
        # non-power-of-two head_dim or a data-dependent size fail here, at configuration time.
        self.check(Layout(1, 64, head_dim, torch.float32))

    @property
    def spec(self) -> str:
        return f"{self.recipe.text};head_dim={self.head_dim}"

    # --- layout ---------------------------------------------------------------------------
    def check(self, layout: Layout) -> int:
        """Frame bytes for chunks of ``layout`` (ConfigError/RecipeError if the recipe cannot encode them)."""
        return self._template(layout).nbytes

    def _template(self, layout: Layout) -> _Template:
        with self._lock:
            if layout not in self._templates:
                self._templates[layout] = self._make_template(layout)
            return self._templates[layout]

    def _make_template(self, layout: Layout) -> _Template:
        if layout.hidden % self.head_dim:
            raise ConfigError(
                f"LMCache chunk hidden size {layout.hidden} is not a multiple of head_dim={self.head_dim}; "
                "set head_dim to the model's (config.json head_dim, or hidden_size // num_attention_heads)"
            )
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(layout.shape, generator=gen).to(layout.dtype)
        b = (torch.randn(layout.shape, generator=gen) * 3 + 1).to(layout.dtype)
        first, second = self.quantize(a), self.quantize(b)
        if [_signature(e) for pair in first for e in pair] != [_signature(e) for pair in second for e in pair]:
            raise RecipeError(
                f"recipe '{self.recipe.text}' stores a data-dependent number of bytes; LMCache 0.5.6 needs a "
                "fixed size per chunk: use a uniform quantizer (int8, int4, int2, kivi)"
            )
        entries = []
        for pair in first:
            for enc in pair:
                for arr in _walk(enc):
                    if isinstance(arr, Symbols):
                        entries.append((KIND_CODES, arr.bits, int(arr.packed.shape[1]), arr.packed.numel()))
                    elif arr is not None:
                        entries.append((KIND_RAW, 0, 0, arr.numel() * arr.element_size()))
        if len(entries) > 0xFFFF:
            raise ConfigError(f"LMCache chunk of {layout.layers} layers needs {len(entries)} arrays; at most 65535")
        nbytes = HEADER.size + ENTRY.size * len(entries) + sum(e[3] for e in entries)
        return _Template(first, entries, nbytes)

    def fingerprint(self, layout: Layout) -> int:
        return zlib.crc32(f"{self._canonical};{list(layout.shape)};{layout.dtype}".encode())

    # --- encode / decode ------------------------------------------------------------------
    def quantize(self, chunk: torch.Tensor) -> list[tuple]:
        """``[2, L, T, H*D]`` -> per layer (keys, values) containers, by the recipe's own stages."""
        _, n_layers, tokens, hidden = chunk.shape
        heads = hidden // self.head_dim

        def by_head(x: torch.Tensor) -> torch.Tensor:  # [T, H*D] -> [H, T, D]
            return x.reshape(tokens, heads, self.head_dim).transpose(0, 1)

        layers = [KVLayer.from_dense(by_head(chunk[0, i]), by_head(chunk[1, i])) for i in range(n_layers)]
        cache = KVCache(layers, torch.zeros(tokens, dtype=torch.int32), chunk.dtype)
        ctx = StageContext(num_query_heads=heads, num_kv_heads=heads, head_dim=self.head_dim, num_layers=n_layers)
        out = self.recipe.apply(cache, ctx)
        return [(layer.keys, layer.values) for layer in out.layers]

    def encode(self, chunk: torch.Tensor, out: torch.Tensor | None = None) -> int | bytes:
        """Encode one chunk. With ``out`` (a flat ``uint8`` buffer of at least the frame's size) the
        frame is written there and its size returned; without, the frame's bytes are returned."""
        layout = layout_of([chunk.shape], [chunk.dtype])
        tpl = self._template(layout)
        arrays = []
        for pair in self.quantize(chunk):
            for enc in pair:
                for arr in _walk(enc):
                    if arr is not None:
                        t = arr.packed if isinstance(arr, Symbols) else arr
                        arrays.append(t.contiguous().reshape(-1).view(torch.uint8))
        head = HEADER.pack(MAGIC, VERSION, len(tpl.entries), self.fingerprint(layout), tpl.nbytes - HEADER.size)
        table = b"".join(ENTRY.pack(kind, bits, 0, width, n) for kind, bits, width, n in tpl.entries)
        prefix = torch.frombuffer(bytearray(head + table), dtype=torch.uint8)
        frame = torch.cat([prefix, *arrays])
        if frame.numel() != tpl.nbytes:  # a recipe whose size the two configuration samples did not vary
            raise RecipeError(
                f"recipe '{self.recipe.text}' encoded a chunk in {frame.numel()} bytes, not the {tpl.nbytes} "
                "announced for its layout; LMCache 0.5.6 needs a fixed size: use a uniform quantizer"
            )
        if out is None:
            return frame.numpy().tobytes()
        if out.numel() < frame.numel():
            raise ConfigError(f"output buffer of {out.numel()} bytes; the frame needs {frame.numel()}")
        out.reshape(-1)[: frame.numel()].copy_(frame)
        return int(frame.numel())

    def decode(self, frame: torch.Tensor | bytes, out: torch.Tensor) -> torch.Tensor:
        """Write the chunk a frame holds into ``out`` (``[2, L, T, H*D]`` of the frame's layout)."""
        layout = layout_of([out.shape], [out.dtype])
        tpl = self._template(layout)
        buf = frame if isinstance(frame, torch.Tensor) else torch.frombuffer(bytearray(frame), dtype=torch.uint8)
        buf = buf.reshape(-1)
        if buf.numel() < HEADER.size:
            raise CacheFormatError(f"kvstack LMCache frame of {buf.numel()} bytes; this layout needs {tpl.nbytes}")
        magic, version, n, fp, payload = HEADER.unpack(buf[: HEADER.size].numpy().tobytes())
        if magic == MAGIC and version < VERSION:
            raise CacheFormatError(
                f"kvstack LMCache frame version {version}, from an older kvstack (this one writes {VERSION}): its "
                "recipe cannot be checked against today's defaults; drop it from the store and let LMCache recompute"
            )
        if magic != MAGIC or version != VERSION:
            raise CacheFormatError(f"not a kvstack LMCache frame (magic {magic!r}, version {version})")
        if fp != self.fingerprint(layout) or n != len(tpl.entries) or payload != tpl.nbytes - HEADER.size:
            raise CacheFormatError(
                f"this frame was written with another recipe, head_dim or layout than '{self.spec}' on "
                f"{list(layout.shape)} {layout.dtype}; read it with the serde settings that stored it"
            )
        if buf.numel() < tpl.nbytes:  # a frame cut short
            raise CacheFormatError(f"kvstack LMCache frame of {buf.numel()} bytes; this layout needs {tpl.nbytes}")
        arrays = []
        offset = HEADER.size + ENTRY.size * n
        for pair in tpl.layers:
            for enc in pair:
                for arr in _walk(enc):
                    if arr is None:
                        continue
                    t = arr.packed if isinstance(arr, Symbols) else arr
                    size = t.numel() * t.element_size()
                    arrays.append(buf[offset : offset + size].clone().view(t.dtype).reshape(t.shape))
                    offset += size
        it = iter(arrays)
        heads = layout.hidden // self.head_dim
        for i, (keys, values) in enumerate(tpl.layers):
            for plane, template in ((0, keys), (1, values)):
                rows = _rebuild(template, it).decode()  # [H*T, D]
                out[plane, i].copy_(rows.reshape(heads, layout.tokens, self.head_dim).transpose(0, 1)
                                    .reshape(layout.tokens, layout.hidden))
        return out
