"""Moved to :mod:`kvstack.stages.select.base`; kept so older imports work.

``ScoredSelect`` is the class a user's own score-and-keep stage subclasses (docs/adding-a-stage.md);
import it from ``kvstack.stages.select.base`` in new code.
"""

from kvstack.stages.select.base import *  # noqa: F403
from kvstack.stages.select.base import ScoredSelect, spread_forward

__all__ = ["ScoredSelect", "spread_forward"]
