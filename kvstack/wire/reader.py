"""Read a wire stream incrementally: :class:`StreamDecoder` takes bytes as they arrive and hands
back each layer as soon as its last chunk has been checked and decoded.

Nothing is trusted before it is checked: the preamble and header lengths against the
limits, the header against its CRC and then field by field (``header.py``), each frame's
index, length and CRC before its payload is decoded, and the whole stream against the end
frame. Memory follows what really arrived, never what a header claims: an array is allocated
whole only when the bytes received already cover it at the inflation limit (else it grows
chunk by chunk), and before a chunk is decoded its announced size is checked against the
chunk limit and against ``Limits.max_inflation`` times the bytes received so far (so a small
stream cannot decode to gigabytes). No pickle, no ``torch.load``: payloads are raw bytes or compressed raw bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch

from kvstack.errors import CacheFormatError, InputError, KvstackError
from kvstack.kv import Encoded, KVCache, KVLayer
from kvstack.wire.checksum import crc32c
from kvstack.wire.encodings import encoding_of_kind
from kvstack.wire.format import END_INDEX, END_PAYLOAD, FRAME, MAGIC, PREAMBLE, READABLE_VERSIONS, Limits
from kvstack.wire.hashing import prefix_hash
from kvstack.wire.header import Header, parse_header

_TRUNCATED = (
    "the cache stream ended early (truncated file or interrupted transfer); fetch or save it again"
)


class StreamDecoder:
    """Push-style decoder: ``feed(bytes)`` returns the layers completed by those bytes,
    ``finish()`` the :class:`KVCache` once the end frame has arrived.

    ``verify_only=True`` checks structure and checksums without decoding layers;
    ``keep_layers=False`` decodes every chunk and builds every layer (each container checks its
    shapes against its meta) but drops each layer once built, so memory stays at about one
    layer: what a server does before committing an upload. ``expect_fingerprint`` (a string, or
    a function of the header's fingerprint returning the one expected) fails right after the
    header when the cache belongs to another model.
    """

    def __init__(self, limits: Limits | None = None, *, verify_only: bool = False, keep_layers: bool = True,
                 expect_fingerprint: str | Callable[[str], str] | None = None,
                 expect_tokenizer: str | None = None) -> None:
        self.limits = limits or Limits()
        self.verify_only = verify_only
        self.keep_layers = keep_layers
        self.expect_fingerprint = expect_fingerprint
        self.expect_tokenizer = expect_tokenizer
        self.header: Header | None = None
        self.done = False
        self._buf = bytearray()
        self._consumed = 0
        self._header_len: int | None = None
        self._next = 0
        self._data: dict[int, _Rows] = {}
        self._produced = 0  # decoded bytes so far (the inflation check)
        self._shared: dict[int, torch.Tensor] = {}
        self._layers: list[KVLayer | None] = []
        self._next_layer = 0

    # --- public -------------------------------------------------------------------------------
    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[int, KVLayer]]:
        if self.done and len(data):
            raise CacheFormatError("corrupt cache: bytes after the end of the stream")
        if self._consumed + len(self._buf) + len(data) > self.limits.max_stream_bytes:
            limit = self.limits.max_stream_bytes
            raise CacheFormatError(f"cache stream is longer than the reader's limit of {limit} bytes")
        self._buf += data
        ready: list[tuple[int, KVLayer]] = []
        while self._step(ready):
            pass
        return ready

    def finish(self) -> KVCache:
        """The decoded cache (CacheFormatError if the stream was cut short)."""
        self.check_complete()
        if self.verify_only or not self.keep_layers:
            raise InputError("this decoder keeps no tensors (verify_only or keep_layers=False); use StreamDecoder()")
        h = self.header
        ids = self._tensor(h.context_array)
        return KVCache(
            layers=list(self._layers),
            context_ids=ids,
            dense_dtype=h.dense_dtype,
            recipe=h.recipe,
            model_fingerprint=h.model_fingerprint,
            stats=dict(h.raw["stats"]),
            dense_layout=[(a, b, c) for a, b, c in h.raw["dense_layout"]],
        )

    def check_complete(self) -> Header:
        if not self.done:
            raise CacheFormatError(_TRUNCATED)
        return self.header

    # --- parsing ------------------------------------------------------------------------------
    def _take(self, n: int) -> bytes | None:
        if len(self._buf) < n:
            return None
        with memoryview(self._buf) as view:
            out = bytes(view[:n])  # one copy (slicing the bytearray first would make two)
        del self._buf[:n]
        self._consumed += n
        return out

    def _step(self, ready: list) -> bool:
        if self.done:
            if self._buf:
                raise CacheFormatError("corrupt cache: bytes after the end of the stream")
            return False
        if self._header_len is None:
            pre = self._take(PREAMBLE.size)
            if pre is None:
                return False
            magic, version, flags, length = PREAMBLE.unpack(pre)
            if magic != MAGIC:
                raise CacheFormatError("not a kvstack cache (bad magic bytes); save caches with kvstack.save")
            if version not in READABLE_VERSIONS:
                raise CacheFormatError(
                    f"cache format version {version}; this kvstack reads versions "
                    f"{', '.join(map(str, READABLE_VERSIONS))}. Use the kvstack "
                    "that wrote it, or re-save the cache with this version"
                )
            if flags != 0:
                raise CacheFormatError(f"corrupt cache: unknown flags {flags:#x} in the preamble")
            if length > self.limits.max_header_bytes:
                raise CacheFormatError(f"corrupt cache: header of {length} bytes is over the limit")
            self._header_len = length
            return True
        if self.header is None:
            data = self._take(self._header_len + 4)
            if data is None:
                return False
            body, crc = data[:-4], int.from_bytes(data[-4:], "little")
            if crc32c(body) != crc:
                raise CacheFormatError("corrupt cache: header checksum mismatch")
            self.header = parse_header(body, self.limits)
            self._check_identity()
            self._layers = [None] * len(self.header.layers)
            self._emit(ready)
            return True
        if len(self._buf) < FRAME.size:
            return False
        index, length, crc = FRAME.unpack_from(self._buf)
        if index == END_INDEX:
            return self._end(length, crc)
        if index != self._next:
            raise CacheFormatError(f"corrupt cache: frame {index} where frame {self._next} was due")
        array, start, stop = self.header.chunks[index]
        spec = self.header.arrays[array]
        if length > _max_payload(spec, stop - start, self.limits):
            raise CacheFormatError(f"corrupt cache: frame {index} claims {length} bytes, too many for its rows")
        if len(self._buf) < FRAME.size + length:
            return False
        self._take(FRAME.size)
        payload = self._take(length)
        if crc32c(payload) != crc:
            raise CacheFormatError(f"corrupt cache: checksum mismatch in chunk {index} ({spec.name})")
        if not self.verify_only or array == self.header.context_array:
            self._check_inflation((stop - start) * spec.row_bytes)
            block = spec.decode_block(payload, stop - start)
            rows = self._data.get(array)
            if rows is None:
                rows = self._data[array] = _Rows(spec.nbytes, self._budget() >= spec.nbytes - len(block))
            rows.add(block)  # chunks arrive in row order
        self._next += 1
        if array == self.header.context_array and self.header.array_last_chunk[array] == index:
            self._check_context()
        self._emit(ready)
        return True

    def _end(self, length: int, crc: int) -> bool:
        if self._next != len(self.header.chunks):
            raise CacheFormatError(
                f"corrupt cache: stream ends after {self._next} of {len(self.header.chunks)} chunks"
            )
        if length != END_PAYLOAD.size:
            raise CacheFormatError("corrupt cache: bad end frame")
        if len(self._buf) < FRAME.size + length:
            return False
        before = self._consumed
        self._take(FRAME.size)
        payload = self._take(length)
        if crc32c(payload) != crc or END_PAYLOAD.unpack(payload)[0] != before:
            raise CacheFormatError("corrupt cache: end frame does not match the stream length")
        if self.header.context_tokens == 0:
            self._check_context()
        self.done = True
        return True

    # --- checks and assembly ---------------------------------------------------------------------
    def _check_identity(self) -> None:
        from kvstack.errors import ModelError

        h = self.header
        want = self.expect_fingerprint
        if callable(want):  # e.g. the model's config or weights fingerprint, by what the cache carries
            want = want(h.model_fingerprint)
        if want is not None and h.model_fingerprint != want:
            raise ModelError(
                f"this cache was built by another model (fingerprint {h.model_fingerprint or 'none'}, this model "
                f"{want}); load the model it was built with, or compress the context again "
                "with this model"
            )
        if self.expect_tokenizer is not None and h.tokenizer is not None and h.tokenizer != self.expect_tokenizer:
            raise ModelError(
                f"this cache was built with another tokenizer (hash {h.tokenizer}, yours {self.expect_tokenizer}); "
                "its token ids mean different text here: tokenize with the tokenizer it was built with"
            )

    def _budget(self) -> int:
        """Decoded bytes the inflation limit still allows."""
        return self.limits.max_inflation * self._consumed + self.limits.inflation_allowance - self._produced

    def _check_inflation(self, nbytes: int) -> None:
        lim = self.limits
        self._produced += nbytes
        if self._budget() < 0:
            raise CacheFormatError(
                f"cache stream would decode to over {lim.max_inflation}x its {self._consumed} bytes so far "
                f"({self._produced} bytes): a decompression bomb or a corrupt header; raise "
                "Limits.max_inflation if you trust the source"
            )

    def _check_context(self) -> None:
        h = self.header
        ids = self._tensor(h.context_array)
        if prefix_hash(ids) != h.context_sha256:
            raise CacheFormatError("corrupt cache: context token ids do not match the header's hash")

    def _tensor(self, array: int) -> torch.Tensor:
        if array in self._shared:
            return self._shared[array]
        spec = self.header.arrays[array]
        buf = self._data.pop(array, None)
        if buf is None or not buf.size:  # no rows (or zero-width rows): viewing b"" as fp16 fails
            t = torch.empty(spec.shape, dtype=spec.dtype)
        else:
            t = torch.from_numpy(buf.array()).view(spec.dtype).reshape(spec.shape)
        if array == self.header.context_array:
            self._data[array] = buf  # ids are read twice (hash check, then the cache)
        elif spec.shared:
            self._shared[array] = t  # every reference gets the same tensor, shared as when saved
        return t

    def _emit(self, ready: list) -> None:
        if self.verify_only:
            return
        h = self.header
        while self._next_layer < len(h.layers) and h.layer_last_chunk[self._next_layer] < self._next:
            i = self._next_layer
            layer = self._build_layer(h.layers[i], i)
            if self.keep_layers:
                self._layers[i] = layer
                ready.append((i, layer))
            self._next_layer += 1

    def _build_layer(self, desc: dict, i: int) -> KVLayer:
        positions = None
        if desc["positions"] is not None:
            positions = self._tensor(desc["positions"])
            if positions.dtype.is_floating_point or positions.dim() != 1:
                raise CacheFormatError(f"corrupt cache: layer {i} positions must be 1-D integers")
        meta = dict(desc["meta"])
        meta.update({k: self._tensor(a) for k, a in desc["meta_arrays"].items()})
        try:
            return KVLayer(
                keys=self._build_node(desc["keys"]),
                values=self._build_node(desc["values"]),
                lengths=desc["lengths"],
                positions=positions,
                sliding_window=desc["sliding_window"],
                meta=meta,
            )
        except CacheFormatError:
            raise
        except KvstackError as exc:
            raise CacheFormatError(f"corrupt cache: layer {i} is inconsistent ({exc})") from exc

    def _build_node(self, node: dict) -> Encoded:
        coding = encoding_of_kind(node["kind"])
        arrays = {k: None if a is None else self._tensor(a) for k, a in node["arrays"].items()}
        children = {k: self._build_node(v) for k, v in node["children"].items()}
        try:
            built = coding.build(node["meta"], arrays, children)
            width = int(built.shape[1])
        except KvstackError:
            raise
        except (TypeError, ValueError, KeyError, IndexError, RuntimeError, AttributeError) as exc:
            raise CacheFormatError(f"corrupt cache: {node['kind']} rows do not build ({exc})") from exc
        if width > self.limits.max_head_dim:  # e.g. a Hadamard wrapper would build a width^2 matrix
            raise CacheFormatError(
                f"corrupt cache: {node['kind']} rows of width {width}, over the reader's head_dim limit of "
                f"{self.limits.max_head_dim} (Limits.max_head_dim)"
            )
        return built


class _Rows:
    """One array's bytes as its chunks arrive. Allocated whole at its announced size when the
    inflation budget already covers that (no copies: the common case), else grown chunk by chunk,
    so memory follows what arrived rather than what a header claims."""

    def __init__(self, nbytes: int, whole: bool) -> None:
        self.buf: np.ndarray | bytearray = np.empty(nbytes, dtype=np.uint8) if whole else bytearray()
        self.size = 0

    def add(self, block: np.ndarray) -> None:
        if isinstance(self.buf, np.ndarray):
            self.buf[self.size : self.size + block.size] = block
        else:
            self.buf.extend(block)
        self.size += block.size

    def array(self) -> np.ndarray:
        return self.buf if isinstance(self.buf, np.ndarray) else np.frombuffer(self.buf, dtype=np.uint8)


def _max_payload(spec, rows: int, limits: Limits) -> int:
    """The most bytes a frame of ``rows`` rows may honestly take, for its codec."""
    exact = rows * spec.row_bytes
    if spec.codec == "raw":
        bound = exact
    elif spec.codec in ("zstd", "colzstd"):
        bound = exact + exact // 128 + 1024
    else:  # entropy coded: at most ~24 bits per symbol with the coder's leaky model, plus flush words
        bound = rows * spec.dim * 4 + 64
    return min(bound, limits.max_chunk_bytes)


def iter_layers(pieces: Iterable[bytes], **kwargs) -> Iterator[tuple[int, KVLayer]]:
    """Decode a stream of byte pieces, yielding ``(index, layer)`` as each layer completes."""
    dec = StreamDecoder(**kwargs)
    for piece in pieces:
        yield from dec.feed(piece)
    dec.check_complete()


def decode_stream(pieces: Iterable[bytes], **kwargs) -> KVCache:
    """Decode a whole stream given as byte pieces (any split) into a :class:`KVCache`."""
    dec = StreamDecoder(**kwargs)
    for piece in pieces:
        dec.feed(piece)
    return dec.finish()


def decode(data: bytes, **kwargs) -> KVCache:
    """Decode one ``bytes`` holding a whole stream (fed in 1 MiB pieces: the decoder's buffer
    then stays small, which is faster than copying the whole stream into it)."""
    view = memoryview(data)
    return decode_stream((view[i : i + (1 << 20)] for i in range(0, max(len(view), 1), 1 << 20)), **kwargs)
