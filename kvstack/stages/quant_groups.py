"""Moved to :mod:`kvstack.rows.groups`; kept so older imports work.

Import from ``kvstack.rows.groups`` in new code: the row containers and their
bit packing are the storage layer beneath the stages, the wire format and the
kernels, not a stage module.
"""

from kvstack.rows.groups import *  # noqa: F403
from kvstack.rows.groups import fp16_down, fp16_up, run_lengths, segment_ids, token_groups

__all__ = ["fp16_down", "fp16_up", "run_lengths", "segment_ids", "token_groups"]
