"""Where the cells of a grid run: the runner hands its :class:`~kvstack.eval.jobs.SampleJob` s to an
executor and writes the rows it yields, in whatever order they finish.

The runner knows this interface only, never a cluster library: :class:`InProcessExecutor` (the
default, as the grid has always run) or :class:`~kvstack.eval.ray_executor.RayExecutor` (an
optional extra; ``kvstack eval --executor`` picks one).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from kvstack.eval.jobs import SampleJob, run_job

if TYPE_CHECKING:
    from kvstack.eval.runner import EvalSpec

class Executor:
    """Runs sample jobs and yields their rows.

    ``local`` says whether jobs run in this process: the runner then loads the model and passes it
    to :meth:`run`; otherwise the runner loads only the tokenizer (to build prompts) and the
    executor's workers load their own model, so the model is never held twice on one machine.
    """

    name = ""
    local = True

    def prepare(self, spec: EvalSpec) -> None:
        """Check the spec fits this executor, before anything loads; raise a typed error if not."""

    def start(self, spec: EvalSpec, log=print, jobs: int | None = None) -> None:
        """Get the workers ready for ``jobs`` jobs (called only when there are cells to run, so a finished grid
        starts nothing)."""

    def run(self, jobs: Iterable[SampleJob], model=None, tokenizer=None) -> Iterator[dict]:
        """Yield the rows of every job, each row once, as cells finish."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what :meth:`run` started (workers, a cluster connection)."""


class InProcessExecutor(Executor):
    """One job after another in this process, with the runner's model: an unexpected exception stops the run
    (rows already written are kept and a rerun resumes)."""

    name = "in-process"
    local = True

    def run(self, jobs: Iterable[SampleJob], model=None, tokenizer=None) -> Iterator[dict]:
        for job in jobs:
            yield from run_job(model, tokenizer, job)
