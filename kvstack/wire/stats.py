"""Where the bytes of a wire stream go: header, and payload per kind of array (codes, scales,
zeros, dense rows, positions, token ids). For benchmarks and for choosing codecs."""

from __future__ import annotations

from collections import Counter

from kvstack.wire.format import FRAME, PREAMBLE
from kvstack.wire.reader import StreamDecoder


def byte_breakdown(data: bytes) -> dict[str, int]:
    """``{"header": n, "framing": n, "codes": n, "scales": n, ...}`` summing to ``len(data)``.

    An array's kind is the last part of its name (``layers.3.keys.quant.codes`` -> ``codes``);
    the stream is fully validated first.
    """
    dec = StreamDecoder(verify_only=True)
    dec.feed(data)
    header = dec.check_complete()
    _, _, _, header_len = PREAMBLE.unpack_from(data)
    out: Counter[str] = Counter(header=PREAMBLE.size + header_len + 4)
    offset = out["header"]
    for array, _, _ in header.chunks:
        _, length, _ = FRAME.unpack_from(data, offset)
        out["framing"] += FRAME.size
        out[header.arrays[array].name.rsplit(".", 1)[-1]] += length
        offset += FRAME.size + length
    out["framing"] += len(data) - offset  # the end frame
    return dict(out)


def bytes_by_layer(data: bytes) -> tuple[list[int], int]:
    """``(per_layer, shared)``: payload + framing bytes of each layer's frames, and everything else
    (preamble, header, context ids, end frame). The two sum to ``len(data)``. Lets a sender price
    each layer of a cache separately (bandwidth adaptation, ``kvstack bench ttft --deadline``)."""
    dec = StreamDecoder(verify_only=True)
    dec.feed(data)
    header = dec.check_complete()
    owner = {a: i for i, layer in enumerate(header.layers) for a in layer["_arrays"]}
    _, _, _, header_len = PREAMBLE.unpack_from(data)
    offset = PREAMBLE.size + header_len + 4
    per_layer = [0] * len(header.layers)
    for array, _, _ in header.chunks:
        _, length, _ = FRAME.unpack_from(data, offset)
        if array in owner:
            per_layer[owner[array]] += FRAME.size + length
        offset += FRAME.size + length
    return per_layer, len(data) - sum(per_layer)
