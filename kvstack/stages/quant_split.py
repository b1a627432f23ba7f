"""Moved to :mod:`kvstack.rows.split`; kept so older imports work.

Import from ``kvstack.rows.split`` in new code: the row containers and their
bit packing are the storage layer beneath the stages, the wire format and the
kernels, not a stage module.
"""

from kvstack.rows.split import *  # noqa: F403
from kvstack.rows.split import SplitRows

__all__ = ["SplitRows"]
