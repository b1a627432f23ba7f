"""RULER's synthetic tasks (Hsieh et al. 2024), in RULER's own wording, as a task family of
their own: ``kvstack eval --suite ruler``. Lengths are whole-sequence budgets as in RULER
(prompt + answer), so ``8k`` fits an 8k-context model. Not included: RULER's ``qa_2``
(HotpotQA is not available offline) and its few-shot example for ``vt``/``cwe``.
"""

from __future__ import annotations

from kvstack.eval.tasks.ruler.aggregation import RulerCommonWords, RulerFrequentWords
from kvstack.eval.tasks.ruler.niah import NIAH_TASKS
from kvstack.eval.tasks.ruler.qa import RulerQA
from kvstack.eval.tasks.ruler.tracing import RulerVariableTracking

RULER_TASKS = (*NIAH_TASKS, RulerVariableTracking, RulerCommonWords, RulerFrequentWords, RulerQA)
SUITES = {"ruler": tuple(t.name for t in RULER_TASKS)}

__all__ = ["RULER_TASKS", "SUITES"]
