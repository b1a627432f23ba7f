"""Moved to :mod:`kvstack.rows.rotate`; kept so older imports work.

Import from ``kvstack.rows.rotate`` in new code: the row containers and their
bit packing are the storage layer beneath the stages, the wire format and the
kernels, not a stage module.
"""

from kvstack.rows.rotate import *  # noqa: F403
from kvstack.rows.rotate import HadamardRows, check_width, clip_groups, hadamard, rotate, rotation, unrotate

__all__ = ["HadamardRows", "check_width", "clip_groups", "hadamard", "rotate", "rotation", "unrotate"]
