"""``save`` / ``load``: a cache in a file, written atomically and read with every check.

``save`` writes to a temporary file beside the target, flushes it to disk and renames it
into place, so a crash never leaves a half-written cache under the final name. ``load``
checks the model fingerprint (and tokenizer hash, when both sides have one) as soon as the
header is read, before decoding any tensor.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from kvstack.errors import CacheFormatError, InputError
from kvstack.kv import KVCache
from kvstack.wire.format import Limits
from kvstack.wire.hashing import tokenizer_hash
from kvstack.wire.reader import StreamDecoder
from kvstack.wire.writer import check_one_sequence, encode_stream

READ_BLOCK = 1 << 20


def atomic_write(path: str | os.PathLike, pieces) -> int:
    """Write byte ``pieces`` to ``path`` atomically (temp file + fsync + rename); returns the size."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a directory; give a file name such as {path / 'context.kvw'}")
    if not path.parent.is_dir():
        raise InputError(f"directory {path.parent} does not exist; create it first")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    size = 0
    try:
        with os.fdopen(fd, "wb") as f:
            for piece in pieces:
                f.write(piece)
                size += len(piece)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return size


def fsync_dir(directory: Path) -> None:
    """Flush a directory entry (a rename) to disk, where the OS allows opening directories."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save(cache: KVCache, path: str | os.PathLike, *, tokenizer=None, **options) -> int:
    """Write ``cache`` to ``path`` in the wire format; returns the file size in bytes.

    ``options`` are :class:`kvstack.wire.WireOptions` fields, e.g. ``codes="colzstd"`` (default,
    fast), ``codes="ans"`` (smallest) or ``codes="raw"`` (no coding). Pass the ``tokenizer`` to record its hash.
    """
    check_one_sequence(cache)  # before any file is made
    return atomic_write(path, encode_stream(cache, tokenizer=tokenizer, **options))


def expect_model(model, fingerprint: str = "config"):
    """The fingerprint check a decoder runs on a header, for ``model`` (see ``kvstack.hf.fingerprint``)."""
    from kvstack.hf.fingerprint import check_kind, expected_for

    check_kind(fingerprint)
    return lambda found: expected_for(model, found, fingerprint)


def load(path: str | os.PathLike, model=None, *, tokenizer=None, limits: Limits | None = None,
         fingerprint: str = "config") -> KVCache:
    """Read a cache saved by :func:`save`.

    With ``model``, a cache built by another model raises ModelError before anything is
    decoded (likewise ``tokenizer`` when the file recorded one): by its config fingerprint, or
    by config and weights when the cache carries a weights fingerprint; ``fingerprint="weights"``
    refuses a cache that does not. A corrupt or truncated file raises CacheFormatError;
    nothing in the file can run code.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no cache file at {path}; save one with kvstack.save(cache, path)")
    dec = StreamDecoder(
        limits,
        expect_fingerprint=None if model is None else expect_model(model, fingerprint),
        expect_tokenizer=None if tokenizer is None else tokenizer_hash(tokenizer),
    )
    with open(path, "rb") as f:
        while block := f.read(READ_BLOCK):
            dec.feed(block)
    return dec.finish()


def read_header(path: str | os.PathLike, limits: Limits | None = None):
    """The validated header of a cache file, without decoding its tensors."""
    dec = StreamDecoder(limits, verify_only=True)
    with open(path, "rb") as f:
        while dec.header is None and (block := f.read(64 << 10)):
            dec.feed(block)
    if dec.header is None:
        raise CacheFormatError(f"{path}: the file ends before its header does (truncated)")
    return dec.header
