"""Moved to :func:`kvstack.api.compress_many` (public as ``kvstack.compress_many``); kept so older imports work.

One prefill shared by several recipes is part of the public API now, next to ``compress`` whose
steps it shares; the evaluation runner calls it from there.
"""

from kvstack.api import compress_many

__all__ = ["compress_many"]
