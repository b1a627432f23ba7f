"""Moved to :mod:`kvstack.stages.select.scores`; kept so older imports work.

``LayerRows`` is what a user's own selection stage scores (docs/adding-a-stage.md); import the
score helpers from ``kvstack.stages.select.scores`` in new code.
"""

from kvstack.stages.select.scores import *  # noqa: F403
from kvstack.stages.select.scores import (
    LayerRows,
    at_positions,
    attention_received,
    group_reduce,
    newest_rows,
    normalize,
    pool1d,
    rank,
    score_params,
)

__all__ = [
    "LayerRows",
    "at_positions",
    "attention_received",
    "group_reduce",
    "newest_rows",
    "normalize",
    "pool1d",
    "rank",
    "score_params",
]
