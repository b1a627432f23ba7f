"""Moved to :mod:`kvstack.rows.quant`; kept so older imports work.

Import from ``kvstack.rows.quant`` in new code: the row containers and their
bit packing are the storage layer beneath the stages, the wire format and the
kernels, not a stage module.
"""

from kvstack.rows.quant import *  # noqa: F403
from kvstack.rows.quant import AXES, QuantRows, check_settings

__all__ = ["AXES", "QuantRows", "check_settings"]
