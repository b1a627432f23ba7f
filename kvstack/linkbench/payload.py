"""What travels for each path of ``kvstack bench ttft``: wire bytes, and where ``--save-dir`` keeps them.

The text path sends the token ids as a wire stream without layers (the receiver prefills
them); the fp16 path the plain cache with every array raw; compressed recipes go with the
wire format's default coding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvstack.kv import KVCache

TEXT, FP16 = "text", "fp16"


@dataclass
class Payload:
    """What is sent for one path: its name (``text`` is answered by prefilling) and wire bytes."""

    name: str
    blob: bytes


def text_blob(cache: KVCache, ids: torch.Tensor) -> bytes:
    """The text path's message: the token ids in a wire stream with no layers (zstd-coded ids)."""
    from kvstack import wire

    empty = KVCache([], ids.to(torch.int32), cache.dense_dtype, recipe=TEXT,
                    model_fingerprint=cache.model_fingerprint, dense_layout=[])
    return wire.encode(empty)


def payload_file(directory, name: str):
    """Where ``save_dir`` keeps a payload: its name with anything but letters, digits, ``.-_`` as ``_``."""
    import re
    from pathlib import Path

    return Path(directory) / (re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") + ".kvw")


def save_payload(directory, name: str, blob: bytes) -> int:
    from pathlib import Path

    from kvstack.wire.files import atomic_write

    Path(directory).mkdir(parents=True, exist_ok=True)
    return atomic_write(payload_file(directory, name), [blob])


def encode(cache: KVCache, name: str) -> bytes:
    """Wire bytes of a payload: fp16 goes raw (the plain cache), compressed recipes entropy-coded."""
    from kvstack import wire

    if name == FP16:
        return wire.encode(cache, codes="raw", tensors="raw")
    return wire.encode(cache)
