"""The embedded store: one file per cache, ``<root>/<fingerprint>/<prefix>.<recipe id>.kvw``
(``<prefix>.kvw`` for keys without a recipe id, as stored before recipe ids existed).

Uploads stream into ``<root>/.incoming/`` and are renamed into place after an fsync, so a
crash mid-upload leaves at most a stray ``.part`` file there (cleared at the next start once
it is an hour old) and never a half-written cache under a real key. A reader holds an open
file, so a concurrent replace or delete never changes what it is streaming.

Listing does not re-parse headers: an index maps each file's identity (inode, size, mtime) to
its entry, filled by commits and by the first listing that meets a file (in a worker thread),
so a later listing only ``stat``s files, and a file another process replaced is read again.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from kvstack.errors import CacheFormatError, InputError
from kvstack.transport.keys import CacheKey
from kvstack.transport.store import READ_PIECE, Entry
from kvstack.wire.files import fsync_dir, read_header

STALE_SECONDS = 3600
SUFFIX = ".kvw"


def _identity(stat: os.stat_result) -> tuple[int, int, int]:
    """What changes when a file is replaced or rewritten."""
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


class DirectoryUpload:
    def __init__(self, store: DirectoryStore) -> None:
        self.store = store
        self.tmp = store.incoming / f"{uuid.uuid4().hex}.part"
        self.file = open(self.tmp, "wb")  # noqa: SIM115 - closed in commit/abort

    async def write(self, data: bytes) -> None:
        self.file.write(data)

    async def commit(self, entry: Entry) -> None:
        final = self.store.path_of(entry.key)
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        final.parent.mkdir(exist_ok=True)
        os.replace(self.tmp, final)
        fsync_dir(final.parent)
        self.store.remember(final, entry)

    async def abort(self) -> None:
        if not self.file.closed:
            self.file.close()
        self.tmp.unlink(missing_ok=True)


class _FilePieces:
    """Async iteration over an open file; closes it when done or when ``aclose`` is called."""

    def __init__(self, f) -> None:
        self.f = f

    def __aiter__(self) -> _FilePieces:
        return self

    async def __anext__(self) -> bytes:
        block = self.f.read(READ_PIECE) if not self.f.closed else b""
        if not block:
            self.f.close()
            raise StopAsyncIteration
        return block

    async def aclose(self) -> None:
        self.f.close()


class DirectoryStore:
    """Caches as files under ``root`` (created if missing)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).resolve()
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"store {self.root} exists and is not a directory; pick a directory")
        self._index: dict[Path, tuple[tuple[int, int, int], int, str]] = {}  # path -> (identity, tokens, recipe)
        self.incoming = self.root / ".incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)
        now = time.time()
        for stale in self.incoming.glob("*.part"):
            try:
                if now - stale.stat().st_mtime > STALE_SECONDS:
                    stale.unlink()
            except FileNotFoundError:
                continue

    def path_of(self, key: CacheKey) -> Path:
        name = f"{key.prefix}.{key.variant}" if key.variant else key.prefix
        path = (self.root / key.fingerprint / f"{name}{SUFFIX}").resolve()
        if path.parent.parent != self.root:  # CacheKey's pattern already forbids this; belt and braces
            raise InputError(f"cache key {key} escapes the store directory")
        return path

    async def begin_put(self) -> DirectoryUpload:
        return DirectoryUpload(self)

    async def open(self, key: CacheKey) -> tuple[int, AsyncIterator[bytes]] | None:
        try:
            f = open(self.path_of(key), "rb")  # noqa: SIM115 - closed by the iterator
        except FileNotFoundError:
            return None
        return os.fstat(f.fileno()).st_size, _FilePieces(f)

    async def delete(self, key: CacheKey) -> bool:
        path = self.path_of(key)
        self._index.pop(path, None)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def remember(self, path: Path, entry: Entry) -> None:
        """Index a file just committed, so no listing parses its header."""
        try:
            self._index[path] = (_identity(path.stat()), entry.tokens, entry.recipe)
        except FileNotFoundError:
            pass

    async def list(self, fingerprint: str | None = None) -> list[Entry]:
        return await asyncio.to_thread(self._list, fingerprint)

    def _list(self, fingerprint: str | None) -> list[Entry]:
        out = []
        dirs = [self.root / fingerprint] if fingerprint else [p for p in self.root.iterdir() if p.is_dir()]
        for d in dirs:
            if d.name.startswith(".") or not d.is_dir():
                continue
            for path in d.glob(f"*{SUFFIX}"):
                try:
                    key = CacheKey(d.name, *path.name[: -len(SUFFIX)].split(".", 1))
                    stat = path.stat()
                    known = self._index.get(path)
                    if known is None or known[0] != _identity(stat):
                        header = read_header(path)
                        known = self._index[path] = (_identity(stat), header.context_tokens, header.recipe)
                except (InputError, CacheFormatError, FileNotFoundError):
                    continue  # not ours, or deleted while listing
                out.append(Entry(key, stat.st_size, known[1], known[2], stat.st_mtime))
        return sorted(out, key=lambda e: (e.key.fingerprint, e.key.prefix))

    async def close(self) -> None:
        return None
