"""Moved to :mod:`kvstack.rows.pack`; kept so older imports work.

Import from ``kvstack.rows.pack`` in new code: the row containers and their
bit packing are the storage layer beneath the stages, the wire format and the
kernels, not a stage module.
"""

from kvstack.rows.pack import *  # noqa: F403
from kvstack.rows.pack import SUPPORTED_BITS, block_codes, pack_codes, packed_width, unpack_codes

__all__ = ["SUPPORTED_BITS", "block_codes", "pack_codes", "packed_width", "unpack_codes"]
