"""The evaluation tasks by name: ``get_task("niah_single").samples(tokenizer, 1024, 20, seed=0)``."""

from __future__ import annotations

from kvstack.errors import InputError
from kvstack.eval.tasks.base import ALL, ANY, Sample, Task
from kvstack.eval.tasks.cwe import CommonWords
from kvstack.eval.tasks.multihop import MultiHop, MultiHopNumber
from kvstack.eval.tasks.niah import NiahMultikey, NiahMultiquery, NiahMultivalue, NiahSingle, Passkey
from kvstack.eval.tasks.ppl import Perplexity, PerplexityKJV
from kvstack.eval.tasks.qa import ExtractiveQA
from kvstack.eval.tasks.ruler import RULER_TASKS, SUITES
from kvstack.eval.tasks.vartrack import VarTrack

TASKS: dict[str, type[Task]] = {
    t.name: t
    for t in (
        NiahSingle, NiahMultikey, NiahMultivalue, NiahMultiquery, Passkey, VarTrack, CommonWords,
        ExtractiveQA, MultiHop, MultiHopNumber, Perplexity, PerplexityKJV, *RULER_TASKS,
    )
}


def get_task(name: str) -> Task:
    """The task called ``name``; InputError lists the known ones."""
    cls = TASKS.get(name)
    if cls is None:
        raise InputError(f"unknown task {name!r}; tasks: {', '.join(TASKS)} (see `kvstack eval --help`)")
    return cls()


def suite_tasks(name: str) -> tuple[str, ...]:
    """Task names of a named suite (``ruler``); InputError lists the suites."""
    if name not in SUITES:
        raise InputError(f"unknown suite {name!r}; suites: {', '.join(SUITES)}")
    return SUITES[name]


__all__ = ["ALL", "ANY", "SUITES", "TASKS", "suite_tasks", "Sample", "Task", "get_task"]
