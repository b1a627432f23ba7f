"""The evaluation grid: models x tasks x lengths x samples x recipes, one results row per cell.

Per sample, every kvstack recipe is compressed from one shared prefill
(:func:`kvstack.api.compress_many`); kvpress recipes are batched into one worker process at
the end (:mod:`kvstack.eval.peers.kvpress_bridge`) on the very same token ids. Finished cells are
appended to the results file as they complete, so a rerun skips them (resume), and samples
are seeded, decoding greedy: the same command gives the same rows, timings aside.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kvstack.device import check_device
from kvstack.errors import InputError, KvstackError
from kvstack.eval.executors import Executor, InProcessExecutor
from kvstack.eval.jobs import SampleJob
from kvstack.eval.jobs import answer_fields as _answer_fields
from kvstack.eval.jobs import base_row as _base_row
from kvstack.eval.peers.kvpress_bridge import is_peer, parse_peer, peers_python, run_jobs
from kvstack.eval.prompt import Prompt, format_sample
from kvstack.eval.results import ResultsWriter, cell_key, read_rows
from kvstack.eval.tasks import Sample, Task, get_task
from kvstack.kv import BASELINES
from kvstack.stack import Recipe

TIMING_FIELDS = ("prefill_s", "compress_s", "generate_s")


@dataclass
class EvalSpec:
    """What to run. ``lengths`` are context tokens; ``max_new_tokens=None`` uses each task's own."""

    model: str
    recipes: list[str]
    tasks: list[str]
    lengths: list[int]
    samples: int = 20
    seed: int = 0
    max_new_tokens: int | None = None
    chunk_size: int = 1024
    threads: int | None = None  # torch CPU threads; 1 is fastest on a busy shared machine
    device: str = "cpu"  # where the model, its caches and kvstack's stages compute (cuda: kernels too)
    dtype: str | None = None  # weights' dtype (float32 | bfloat16 | float16); None keeps the stored one
    parsed: dict[str, Recipe] = field(default_factory=dict, repr=False)

    def check(self, local: bool = True) -> list[Task]:
        """Validate everything cheap before a model loads; returns the task objects. ``local=False``: the
        cells run on other machines (an executor's workers), so the device is not looked for here."""
        if not self.recipes:
            raise InputError("no recipes given: pass --recipes identity int8 ...")
        check_device(self.device, here=local)
        if self.samples < 1:
            raise InputError(f"--samples {self.samples}: ask for at least 1 sample per cell")
        if not self.lengths or min(self.lengths) < 16:
            raise InputError("--lengths must be at least 16 tokens each (e.g. 512 1k 2k)")
        tasks = [get_task(t) for t in self.tasks]
        if not tasks:
            raise InputError("no tasks given: pass --tasks qa ppl ...")
        for text in self.recipes:
            if is_peer(text):
                parse_peer(text)
            else:
                self.parsed[text] = Recipe.parse(text)
        if any(is_peer(r) for r in self.recipes):
            peers_python()
        if len(set(self.recipes)) != len(self.recipes):
            raise InputError("a recipe is listed twice in --recipes")
        return tasks


def parse_length(text: str) -> int:
    """``512`` / ``1k`` / ``1.5k`` / ``8K`` -> tokens (k = 1024)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kK]?)\s*", str(text))
    if not m:
        raise InputError(f"length {text!r} is not a token count: write 512, 1k, 1.5k or 8k")
    value = float(m[1]) * (1024 if m[2] else 1)
    if value != int(value):
        raise InputError(f"length {text!r} is not a whole number of tokens")
    return int(value)


def dense_bytes(info, tokens: int) -> int:
    """What a plain HF cache holds for ``tokens`` context tokens (sliding layers keep their window)."""
    elem = info_elem(info)
    per_layer = [tokens if w is None else min(tokens, w - 1) for w in info.sliding_windows]
    return sum(2 * info.num_kv_heads * info.head_dim * t * elem for t in per_layer)


def info_elem(info) -> int:
    """Bytes per element of the model's dtype."""
    return torch.empty((), dtype=info.dtype).element_size()


def load_model(name: str, dtype: str | None = None, progress: bool = False):
    """``(model, tokenizer)`` through the zoo, with a clear error for a directory missing its tokenizer."""
    from kvstack.zoo import load

    _check_tokenizer_files(name)
    try:
        return load(name, dtype=getattr(torch, dtype) if dtype else None, progress=progress)
    except (OSError, ValueError) as exc:
        if isinstance(exc, KvstackError):
            raise
        raise InputError(f"could not load model or tokenizer from {name!r}: {exc}") from exc


def load_tokenizer(name: str):
    """The tokenizer alone (no weights), for a runner whose executor's workers load the model."""
    from kvstack.zoo import load_tokenizer as zoo_tokenizer

    _check_tokenizer_files(name)
    try:
        return zoo_tokenizer(name)
    except (OSError, ValueError) as exc:
        if isinstance(exc, KvstackError):
            raise
        raise InputError(f"could not load the tokenizer from {name!r}: {exc}") from exc


def _check_tokenizer_files(name: str) -> None:
    from kvstack.zoo import ZOO

    path = Path(name)
    if name not in ZOO and path.is_dir():
        names = {"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "spiece.model"}
        if not any((path / n).is_file() for n in names):
            raise InputError(
                f"{path} has no tokenizer (no tokenizer.json / tokenizer.model / tokenizer_config.json): save it "
                "there with tokenizer.save_pretrained(dir); evaluation formats prompts with the model's tokenizer"
            )


class Runner:
    """Runs an :class:`EvalSpec` into a results file; see the module doc.

    ``executor`` says where the kvstack cells run (:mod:`kvstack.eval.executors`; default: in this
    process). The runner builds one job per sample and writes the rows the executor yields, in the
    order they finish; it closes the executor when :meth:`run` ends.
    """

    def __init__(self, spec: EvalSpec, out: str | Path, model=None, tokenizer=None, progress: bool = True,
                 log=print, executor: Executor | None = None) -> None:
        self.spec, self.out, self.progress, self.log = spec, Path(out), progress, log
        self.executor = executor or InProcessExecutor()
        if not self.executor.local and any(is_peer(r) for r in spec.recipes):
            raise InputError(
                f"kvpress recipes run in this machine's peers venv, not on --executor {self.executor.name}: run them "
                "with the default executor into the same --out (the file is shared and resumable)"
            )
        self.tasks = spec.check(local=self.executor.local)
        self.executor.prepare(spec)
        self.model, self.tokenizer = model, tokenizer
        self.done_devices: set[str] = set()  # devices of the finished rows found on resume

    def done_keys(self) -> set[str]:
        if not self.out.is_file():
            return set()
        rows, _ = read_rows(self.out)
        # an "error" row (an unexpected failure) is retried; ok and skipped cells are final
        final = [r for r in rows if r.get("status") in ("ok", "skipped")]
        self.done_devices = {str(r.get("device", "cpu")) for r in final}
        return {cell_key(r["model"], r["seed"], r["task"], r["length"], r["index"], r["recipe"]) for r in final}

    def run(self) -> dict:
        """Run every unfinished cell; returns counts ``{"done", "ran", "skipped", "errors"}``."""
        threads = torch.get_num_threads()
        try:
            return self._run()
        finally:
            torch.set_num_threads(threads)  # --threads is for this grid only
            self.executor.close()

    def _run(self) -> dict:
        spec = self.spec
        done = self.done_keys()
        cells = [
            (t, length, i, r) for t in self.tasks for length in spec.lengths for i in range(spec.samples)
            for r in spec.recipes
        ]
        todo = [c for c in cells if cell_key(spec.model, spec.seed, c[0].name, c[1], c[2], c[3]) not in done]
        counts = {"done": len(cells) - len(todo), "ran": 0, "skipped": 0, "errors": 0}
        if not todo:
            self.log(f"all {len(cells)} cells already in {self.out}; nothing to run")
            return counts
        other = sorted(self.done_devices - {spec.device})
        if counts["done"] and other:  # resuming keeps finished cells; say where they ran
            self.log(f"note: finished cells in {self.out} ran on {', '.join(other)}; the {len(todo)} new ones run on "
                     f"{spec.device} (every row records its device; use another --out to keep devices apart)")
        self._load()
        torch.manual_seed(spec.seed)
        if spec.threads:
            torch.set_num_threads(spec.threads)
        jobs = len({(t.name, length, i) for t, length, i, r in todo if not is_peer(r)})
        self.executor.start(spec, self.log, jobs=jobs)
        from tqdm.auto import tqdm

        pending = {cell_key(spec.model, spec.seed, c[0].name, c[1], c[2], c[3]) for c in todo}
        bar = tqdm(total=len(todo), unit="cell", desc="eval", disable=not self.progress)
        with ResultsWriter(self.out) as writer:
            if writer.dropped:
                self.log(f"{self.out}: removed a truncated last line ({writer.dropped} bytes); that cell is redone")
            peer_jobs: list[tuple[dict, dict, Sample]] = []

            def emit(row: dict) -> None:
                writer.write(row)
                status = row.get("status")
                counts["ran" if status == "ok" else "skipped" if status == "skipped" else "errors"] += 1
                if status == "error":
                    self.log(f"error: {row['task']} length {row['length']} sample {row['index']} "
                             f"{row['recipe']!r}: {row.get('reason', '')[:300]}")
                bar.update(1)

            for row in self.executor.run(self._jobs(pending, peer_jobs), self.model, self.tokenizer):
                emit(row)
            if peer_jobs:
                for row in self._run_peers(peer_jobs):
                    emit(row)
        bar.close()
        return counts

    def _load(self) -> None:
        """The model here (in-process), or only the tokenizer when the executor's workers load the model."""
        spec = self.spec
        if self.executor.local:
            from kvstack.hf.model import context_limit

            if self.model is None:
                self.model, self.tokenizer = load_model(spec.model, spec.dtype, progress=self.progress)
            self._check_lengths(context_limit(self.model))
            if next(self.model.parameters()).device != torch.device(spec.device):
                self.model = self.model.to(spec.device)  # kvpress peers still run on the CPU, in their own venv
            return
        from kvstack.zoo import max_context

        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(spec.model)
        self._check_lengths(max_context(spec.model))

    def _jobs(self, pending: set[str], peer_jobs: list) -> Iterator[SampleJob]:
        """One job per sample with kvstack cells to run, built as the executor asks for them; kvpress cells
        are collected into ``peer_jobs`` on the way (they run afterwards, in one worker)."""
        spec = self.spec
        for task in self.tasks:
            for length in spec.lengths:
                wanted = [
                    i for i in range(spec.samples)
                    if any(cell_key(spec.model, spec.seed, task.name, length, i, r) in pending for r in spec.recipes)
                ]
                if not wanted:
                    continue
                samples = task.samples(self.tokenizer, length, max(wanted) + 1, spec.seed)
                for sample in (samples[i] for i in wanted):
                    prompt = format_sample(self.tokenizer, sample)
                    mine = [r for r in spec.recipes
                            if cell_key(spec.model, spec.seed, task.name, length, sample.index, r) in pending]
                    for r in mine:
                        if is_peer(r):
                            peer_jobs.append(self._peer_job(task, length, sample, prompt, r))
                    ours = [r for r in mine if not is_peer(r)]
                    if ours:
                        yield SampleJob(spec, task.kind, task.max_new_tokens, length, sample, prompt, ours)

    def _check_lengths(self, limit: int | None) -> None:
        """Every length must fit the model's context window: a typed error before any prefill."""
        too_long = [n for n in self.spec.lengths if limit is not None and n > limit]
        if too_long:
            raise InputError(
                f"--lengths {' '.join(map(str, too_long))} exceed {self.spec.model}'s context window of {limit} "
                f"tokens (max_position_embeddings); use lengths up to {limit}"
            )

    # --- kvpress recipes ------------------------------------------------------------------
    def _peer_job(self, task: Task, length: int, sample: Sample, prompt: Prompt, recipe: str):
        peer = parse_peer(recipe)
        row = {**_base_row(self.spec, sample, length, recipe, prompt), "system": "kvpress"}
        job = {
            "id": cell_key(self.spec.model, self.spec.seed, task.name, length, sample.index, recipe),
            "press": peer.press, "kwargs": peer.kwargs,
            "context_ids": prompt.context_ids.tolist(), "question_ids": prompt.question_ids.tolist(),
            "continuation_ids": None if prompt.continuation_ids is None else prompt.continuation_ids.tolist(),
            "answer_ids": None if prompt.answer_ids is None else prompt.answer_ids.tolist(),
            "max_new_tokens": self.spec.max_new_tokens or task.max_new_tokens,
        }
        return job, row, sample

    def _run_peers(self, jobs: list[tuple[dict, dict, Sample]]):
        from kvstack.hf.model import model_info

        info = model_info(self.model)
        by_id = {job["id"]: (row, sample) for job, row, sample in jobs}
        dtype = str(info.dtype).removeprefix("torch.")
        dtype_name = next((n for n, dt in BASELINES.items() if dt == info.dtype), dtype)
        for result in run_jobs(self.spec.model, dtype, [job for job, _, _ in jobs], threads=self.spec.threads):
            if "hello" in result:
                self.log(f"kvpress worker: kvpress {result['kvpress']}, transformers {result['transformers']}, "
                         f"torch {result['torch']}")
                continue
            row, sample = by_id[result["id"]]
            if result["status"] != "ok":
                yield {**row, "status": result["status"], "reason": result.get("reason", "")}
                continue
            dense = dense_bytes(info, row["context_tokens"])
            row = {
                **row, "status": "ok", "cache_bytes": result["cache_bytes"], "dense_bytes": dense,
                "ratio": dense / max(result["cache_bytes"], 1),
                "ratio_fp16": dense * 2 / info_elem(info) / max(result["cache_bytes"], 1), "dense_dtype": dtype_name,
                "bytes_per_token": result["cache_bytes"] / max(row["context_tokens"], 1),
                "tokens_kept": sum(result["kept_tokens"]) * info.num_kv_heads,
                "prefill_s": result["prefill_s"], "compress_s": None, "generate_s": result["generate_s"],
            }
            if "nll_sum" in result:
                row.update(nll_sum=result["nll_sum"], nll_tokens=result["nll_tokens"])
            else:
                row.update(_answer_fields(self.tokenizer, sample, result["answer_ids"]))
            if "answer_nll_sum" in result:
                row.update(answer_nll_sum=result["answer_nll_sum"], answer_tokens=result["answer_tokens"])
            yield row
