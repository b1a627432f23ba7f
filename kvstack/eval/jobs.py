"""One sample's kvstack cells as a self-contained unit of work, and the code that runs it.

An executor (:mod:`kvstack.eval.executors`) runs :class:`SampleJob` s: in this process with the
runner's model, or on Ray workers that load their own. A job carries everything its cells need
(the spec, the token ids, the sample's answers) and nothing that ties it to the process that built
it, so it pickles; one job is one shared prefill for all its recipes, as the grid has always run.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from kvstack.errors import InputError, KvstackError
from kvstack.eval.metrics import f1, score
from kvstack.eval.prompt import Prompt
from kvstack.eval.tasks import Sample

if TYPE_CHECKING:
    from kvstack.eval.runner import EvalSpec


@dataclass
class SampleJob:
    """The kvstack recipes of one (task, length, sample) still to run, with what running them needs."""

    spec: EvalSpec
    kind: str  # the task's kind: "generate" (answer a question) or "nll" (score a continuation)
    max_new_tokens: int  # the task's own answer length (spec.max_new_tokens overrides it)
    length: int
    sample: Sample
    prompt: Prompt
    recipes: list[str]

    def base_row(self, recipe: str) -> dict:
        return {**base_row(self.spec, self.sample, self.length, recipe, self.prompt), "system": "kvstack"}

    def error_rows(self, exc: BaseException, recipes: list[str] | None = None) -> list[dict]:
        """``status: error`` rows for ``recipes`` (default: all of them): recorded, and redone on resume."""
        return [error_row(self.base_row(r), exc) for r in (self.recipes if recipes is None else recipes)]


def base_row(spec: EvalSpec, sample: Sample, length: int, recipe: str, prompt: Prompt) -> dict:
    """The fields every row of a cell has, whatever its outcome."""
    return {
        "model": spec.model, "seed": spec.seed, "task": sample.task, "length": length, "index": sample.index,
        "recipe": recipe, **recipe_record(recipe), "context_tokens": int(prompt.context_ids.numel()),
        "question_tokens": int(prompt.question_ids.numel()), "answers": list(sample.answers), "mode": sample.mode,
        "device": spec.device, "dtype": spec.dtype or "stored",
    }


def recipe_record(recipe: str) -> dict:
    """What ``recipe`` ran, recorded with the row: ``canonical`` (every default written out) for any recipe that
    parses, and ``expanded`` (the stages) for a preset name. Presets are re-pointed and defaults move as they are
    re-derived; `kvstack paired` pools rows by what they ran, not by today's meaning of their text."""
    from kvstack.grammar.presets import expand
    from kvstack.grammar.syntax import canonical_or_none

    canonical = canonical_or_none(recipe)
    if canonical is None:  # recorded as given; the run itself reports the error
        return {}
    stages = expand(recipe)
    return {"canonical": canonical, **({"expanded": stages} if stages != recipe else {})}


def answer_fields(tokenizer, sample: Sample, ids: torch.Tensor | list[int]) -> dict:
    """The decoded answer and its scores."""
    prediction = tokenizer.decode(ids, skip_special_tokens=True).strip()
    exact, contains = score(prediction, sample.answers, sample.mode)
    return {"prediction": prediction, "exact": exact, "contains": contains, "f1": f1(prediction, sample.answers)}


def error_row(row: dict, exc: BaseException) -> dict:
    """A cell that failed unexpectedly: its error and where it was raised, so a sweep can go on."""
    where = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-3:])
    return {**row, "status": "error", "reason": f"{type(exc).__name__}: {exc}", "traceback": where[-2000:]}


def run_job(model, tokenizer, job: SampleJob, catch: tuple[type[Exception], ...] = ()) -> Iterator[dict]:
    """Yield one row per recipe of ``job``, each as soon as it is finished.

    A recipe that cannot run on this cell (a :class:`KvstackError`) gives a ``skipped`` row. An
    exception of a type in ``catch`` gives an ``error`` row for that cell and the other recipes go
    on; any other exception propagates (the in-process default: the run stops, finished rows kept).
    """
    from kvstack.api import compress_many
    from kvstack.hf.decoded_rows import reuse_decoded_rows
    from kvstack.hf.model import check_context_window

    spec, prompt, sample = job.spec, job.prompt, job.sample
    q = prompt.question_ids if prompt.question_ids.numel() else None
    new_tokens = 0 if job.kind == "nll" else spec.max_new_tokens or job.max_new_tokens
    extra = prompt.continuation_ids.numel() if prompt.continuation_ids is not None else new_tokens
    try:  # this sample (context + question + answer) must fit the window: checked before prefill
        check_context_window(model, prompt.context_ids.numel() + prompt.question_ids.numel() + extra,
                             f"sample {sample.index} of {sample.task} at {job.length}")
    except InputError as exc:
        for recipe in job.recipes:
            yield {**job.base_row(recipe), "status": "skipped", "reason": f"InputError: {exc}"}
        return
    objs = [spec.parsed[r] for r in job.recipes]
    kept = (KvstackError, *catch)
    for recipe, cache in compress_many(model, prompt.context_ids, objs, q, chunk_size=spec.chunk_size, keep=kept):
        row = job.base_row(recipe.text)
        if isinstance(cache, KvstackError):
            yield {**row, "status": "skipped", "reason": f"{type(cache).__name__}: {cache}"}
            continue
        if isinstance(cache, BaseException):
            yield error_row(row, cache)
            continue
        row.update(
            cache_bytes=cache.nbytes, dense_bytes=cache.dense_nbytes, ratio=cache.ratio,
            ratio_fp16=cache.ratio_vs("fp16"), dense_dtype=cache.dense_dtype_name,
            bytes_per_token=cache.nbytes / max(cache.context_length, 1), tokens_kept=cache.tokens_kept,
            prefill_s=cache.stats.get("prefill_seconds"), compress_s=cache.stats.get("compress_seconds"),
        )
        start = time.perf_counter()
        try:
            with reuse_decoded_rows():  # each segment decoded once per cell: same tokens, faster (decoded_rows)
                row.update(_answer(model, tokenizer, job, cache, q))
        except KvstackError as exc:
            yield {**row, "status": "skipped", "reason": f"{type(exc).__name__}: {exc}"}
            continue
        except catch as exc:
            yield error_row(row, exc)
            continue
        yield {**row, "status": "ok", "generate_s": time.perf_counter() - start}


def _answer(model, tokenizer, job: SampleJob, cache, q: torch.Tensor | None) -> dict:
    """One cell's measured fields: the continuation's NLL (``nll`` tasks), or the greedy answer, its scores and
    the gold answer's NLL (how likely it stays: signal even when greedy fails)."""
    from kvstack.api import generate
    from kvstack.eval.nll import continuation_nll

    prompt, spec = job.prompt, job.spec
    if job.kind == "nll":
        nll, n = continuation_nll(model, cache, prompt.continuation_ids, q)
        return {"nll_sum": nll, "nll_tokens": n}
    new = spec.max_new_tokens or job.max_new_tokens
    out = answer_fields(tokenizer, job.sample, generate(model, cache, prompt.question_ids, new))
    if prompt.answer_ids is not None:
        nll, n = continuation_nll(model, cache, prompt.answer_ids, prompt.question_ids)
        out.update(answer_nll_sum=nll, answer_tokens=n)
    return out
