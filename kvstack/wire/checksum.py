"""CRC32C (Castagnoli), hardware-accelerated where the CPU has it: one per chunk and for the header."""

from __future__ import annotations

from kvstack.wire.deps import require

_crc32c = require("crc32c")


def crc32c(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """CRC32C of ``data`` (continuing from ``value``)."""
    return _crc32c.crc32c(data, value)
