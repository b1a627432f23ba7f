"""``kvstack eval --executor ray``: the grid's sample jobs as Ray tasks, on a laptop or a GPU cluster.

Each worker is a Ray actor that loads the model once and runs one sample job per task (one
shared prefill for the sample's recipes, exactly as in-process). Actors, not plain tasks: a GPU
actor keeps its one GPU (``num_gpus=1``) for its whole life, while a reused task process could be
handed another GPU after CUDA was already set up on the first. The driver only builds prompts
(tokenizer, no weights) and writes rows to the results file as jobs finish.

A cell that fails is recorded, not lost: an exception in one recipe gives that cell an ``error``
row inside the worker and its other recipes go on; a worker that dies (node lost, killed for
memory, a crash) gives error rows for the cells of the job it held and is replaced. Error rows
are redone on resume, so rerunning the command retries exactly them.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable, Iterator

import torch

from kvstack.errors import ExecutorError, InputError, KvstackError, MissingDependencyError
from kvstack.eval.executors import Executor
from kvstack.eval.jobs import SampleJob, run_job

INSTALL = "pip install 'kvstack[ray]'"
JOBS_PER_WORKER = 2  # one running, one queued: the worker never waits on the driver between jobs


def import_ray():
    """``ray``, or a typed error naming the install command."""
    try:
        import ray
    except ImportError as exc:
        raise MissingDependencyError(
            f"--executor ray needs Ray, which is not installed here: {INSTALL} (or pip install ray); "
            "leave --executor out to run in this process"
        ) from exc
    return ray


class JobWorker:
    """One model in one Ray worker process (one GPU, or ``--threads`` CPUs); runs sample jobs."""

    def __init__(self, spec) -> None:
        from kvstack.device import check_device
        from kvstack.eval.runner import load_model

        # A failure is kept and raised by every call: Ray passes a method's exception on whole (a typed
        # kvstack error stays one), while an actor that dies in __init__ reaches the driver as text only.
        self.failed: Exception | None = None
        try:
            check_device(spec.device)
            if spec.threads:
                torch.set_num_threads(spec.threads)
            model, self.tokenizer = load_model(spec.model, spec.dtype)
            self.model = model.to(spec.device)
        except Exception as exc:
            self.failed = exc

    def ready(self) -> str:
        """Where this worker runs: answered once its model is loaded."""
        if self.failed is not None:
            raise self.failed
        device = next(self.model.parameters()).device
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
        return f"{socket.gethostname()} pid {os.getpid()} {device} ({name})"

    def run(self, job: SampleJob) -> list[dict]:
        """The job's rows; whatever fails becomes error rows for the cells it left undone."""
        if self.failed is not None:
            raise self.failed
        torch.manual_seed(job.spec.seed)
        rows: list[dict] = []
        try:
            rows.extend(run_job(self.model, self.tokenizer, job, catch=(Exception,)))
        except Exception as exc:  # before any recipe ran (the shared prefill): every cell left gets it
            finished = {r["recipe"] for r in rows}
            rows.extend(job.error_rows(exc, [r for r in job.recipes if r not in finished]))
        return rows


START = "Start one with `ray start --head` (then --address auto), or leave --address out for a local one"


def _probe(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a ``HOST:PORT`` (or ``ray://HOST:PORT``) where nothing listens: Ray itself keeps
    retrying such an address for many minutes. ``auto`` (and addresses without a port) are left to Ray."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ExecutorError(f"nothing answers at {address} ({exc}), so no Ray cluster is there. {START}") from None


def _cause(exc: BaseException) -> BaseException:
    """The exception a Ray error wraps (raised in a worker), if it carries one."""
    seen = {id(exc)}
    while isinstance(getattr(exc, "cause", None), BaseException) and id(exc.cause) not in seen:
        exc = exc.cause
        seen.add(id(exc))
    return exc


class RayExecutor(Executor):
    """Sample jobs on Ray actors: one per GPU (``--device cuda``) or per ``--threads`` CPUs."""

    name = "ray"
    local = False

    def __init__(self, address: str | None = None, workers: int | None = None) -> None:
        self.ray = import_ray()
        if workers is not None and workers < 1:
            raise InputError(f"--workers {workers}: give at least 1 (default: one per GPU, or per --threads CPUs)")
        self.address, self.workers = address, workers
        self.actors: list = []
        self._started = False  # whether this executor called ray.init (and so shuts Ray down)
        self._spec = None
        self._dead: list = []

    def prepare(self, spec) -> None:
        address = self.address or os.environ.get("RAY_ADDRESS")
        if address is not None:
            _probe(address)
        device = torch.device(spec.device)
        if device.type == "cuda" and device.index is not None:
            raise InputError(
                f"--device {spec.device} with --executor ray: each Ray worker is given one GPU of its own, which it "
                "sees as cuda; pass --device cuda"
            )

    def _connect(self) -> None:
        ray = self.ray
        if ray.is_initialized():  # a program (or test) that set Ray up itself: use its connection
            return
        address = self.address or os.environ.get("RAY_ADDRESS")
        kwargs = {"address": self.address, "logging_level": logging.WARNING}
        if address is None:
            kwargs["include_dashboard"] = False  # a private local instance
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ExecutorError(f"could not join the Ray cluster at {address}: {exc}. {START}") from exc
        self._started = True

    def _capacity(self, spec) -> tuple[int, dict]:
        """How many workers the live nodes can hold at once, and the resources one needs."""
        gpu = torch.device(spec.device).type == "cuda"
        cpus = spec.threads or 1
        need = {"num_cpus": cpus, "num_gpus": 1 if gpu else 0}
        nodes = [n.get("Resources", {}) for n in self.ray.nodes() if n.get("Alive")]
        if gpu:
            fits = sum(int(r.get("GPU", 0)) for r in nodes if r.get("CPU", 0) >= cpus)
        else:
            fits = sum(int(r.get("CPU", 0) // cpus) for r in nodes)
        if fits < 1:
            what = "a GPU" if gpu else f"{cpus} CPUs (--threads)"
            raise InputError(
                f"no node of the Ray cluster offers {what} for one worker "
                f"({sum(r.get('CPU', 0) for r in nodes):g} CPUs, {sum(r.get('GPU', 0) for r in nodes):g} GPUs in "
                f"all); {'add GPU nodes (ray start --num-gpus N) or use --device cpu' if gpu else 'lower --threads'}"
            )
        return fits, need

    def start(self, spec, log=print, jobs: int | None = None) -> None:
        """Connect (or start a local Ray), then start the workers and wait until each has loaded the model.

        By default one worker per GPU (or per ``--threads`` CPUs) the cluster has, but never more than
        there are jobs: each worker holds a whole model.
        """
        self._connect()
        fits, need = self._capacity(spec)
        count = self.workers or min(fits, jobs or fits)
        if count > fits:
            raise InputError(f"--workers {count}: the Ray cluster holds at most {fits} workers of {need} each")
        self._spec, self._need = spec, need
        self._worker = self.ray.remote(JobWorker)
        self.actors = [self._spawn() for _ in range(count)]
        try:
            where = self.ray.get([a.ready.remote() for a in self.actors])
        except self.ray.exceptions.RayError as exc:
            cause = _cause(exc)
            if isinstance(cause, KvstackError):
                raise cause from None  # e.g. the model directory is missing on a worker's node
            raise ExecutorError(f"the Ray workers could not load {spec.model}: {cause}") from None
        log(f"ray: {count} workers ({need['num_gpus']} GPU, {need['num_cpus']} CPU each): " + "; ".join(where))

    def _spawn(self):
        return self._worker.options(**self._need, max_restarts=0, max_task_retries=0).remote(self._spec)

    def run(self, jobs: Iterable[SampleJob], model=None, tokenizer=None) -> Iterator[dict]:
        ray = self.ray
        free = [a for _ in range(JOBS_PER_WORKER) for a in self.actors]
        busy: dict = {}  # ObjectRef -> (actor, job)
        replaced: dict = {}  # a dead actor's id -> its replacement
        pending = iter(jobs)
        more = True
        while True:
            while free and more:
                job = next(pending, None)
                if job is None:
                    more = False
                    break
                actor = free.pop(0)
                while id(actor) in replaced:  # a slot of a worker that died since (and maybe its replacement too)
                    actor = replaced[id(actor)]
                busy[actor.run.remote(job)] = (actor, job)
            if not busy:
                return
            done, _ = ray.wait(list(busy), num_returns=1)
            actor, job = busy.pop(done[0])
            try:
                rows = ray.get(done[0])
            except ray.exceptions.RayActorError as exc:  # the worker died: its job's cells are recorded as errors
                rows = job.error_rows(_cause(exc))
                actor = self._replace(actor, replaced)
            except ray.exceptions.RayError as exc:  # e.g. the job could not be sent (a stage class missing there)
                rows = job.error_rows(_cause(exc))
            free.append(actor)
            yield from rows

    def _replace(self, actor, replaced: dict):
        if id(actor) not in replaced:
            self.ray.kill(actor)
            self._dead.append(actor)  # kept referenced, so its id() is never reused while `replaced` maps it
            fresh = self._spawn()
            replaced[id(actor)] = fresh
            self.actors = [fresh if a is actor else a for a in self.actors]
        return replaced[id(actor)]

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
        if self._started:
            self.ray.shutdown()
            self._started = False

