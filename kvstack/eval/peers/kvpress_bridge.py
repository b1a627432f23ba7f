"""The kvstack side of the kvpress bridge: recipe names, the subprocess, the bytes it reports.

``kvpress:SnapKVPress:0.5`` runs kvpress's ``SnapKVPress(compression_ratio=0.5)`` - the
number is kvpress's own ``compression_ratio``, the share *removed*; ``keep=0.25`` is the
same as ``0.75``; other ``key=value`` pairs go to the press. ``kvpress:none`` is kvpress's
harness with no press (the full cache), a check that both harnesses agree.

kvpress runs in its own venv (``make peers`` builds ``.venv-peers``) because importing it
rewraps transformers' attention process-wide. Inputs go by file as token ids, so both
systems see identical prompts; answers come back as ids and are decoded here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kvstack.errors import InputError, ModelNotInstalledError, PeerError, RecipeError

PREFIX = "kvpress:"
WORKER = Path(__file__).with_name("kvpress_worker.py")


@dataclass(frozen=True)
class PeerRecipe:
    text: str
    press: str
    kwargs: dict = field(default_factory=dict)


def is_peer(recipe: str) -> bool:
    return recipe.strip().startswith(PREFIX)


def scalar_value(raw: str):
    """A ``key=value`` option's value as written on a command line: bool, int, float, else the string."""
    low = raw.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def parse_peer(recipe: str) -> PeerRecipe:
    """``kvpress:PressName[:ratio][,key=value...]`` -> the press and its constructor arguments."""
    body = recipe.strip()[len(PREFIX) :]
    name, _, args = body.partition(":")
    if not name or not (name == "none" or name.endswith("Press")):
        raise RecipeError(
            f"bad kvpress recipe {recipe!r}: write kvpress:<PressClass>[:compression_ratio][,key=value], "
            "e.g. kvpress:SnapKVPress:0.5 or kvpress:StreamingLLMPress:keep=0.25 (or kvpress:none)"
        )
    kwargs: dict = {}
    for part in [a.strip() for a in args.split(",") if a.strip()]:
        if "=" not in part:
            kwargs["compression_ratio"] = scalar_value(part)
            continue
        key, _, raw = part.partition("=")
        if key.strip() == "keep":
            kwargs["compression_ratio"] = round(1.0 - float(raw), 10)
        else:
            kwargs[key.strip()] = scalar_value(raw.strip())
    ratio = kwargs.get("compression_ratio")
    if ratio is not None and not (isinstance(ratio, float | int) and 0 <= ratio < 1):
        raise RecipeError(f"{recipe}: compression_ratio={ratio} must be in [0, 1) (the share of tokens removed)")
    if name == "none" and kwargs:
        raise RecipeError(f"{recipe}: kvpress:none takes no arguments")
    return PeerRecipe(recipe.strip(), name, kwargs)


def peers_python() -> Path:
    """The interpreter of the kvpress venv: $KVSTACK_PEERS_PYTHON, else .venv-peers of the checkout or cwd."""
    env = os.environ.get("KVSTACK_PEERS_PYTHON")
    if env:
        candidates = [Path(env)]
    else:
        candidates = [Path(__file__).resolve().parents[3] / ".venv-peers/bin/python", Path(".venv-peers/bin/python")]
    for c in candidates:
        if c.is_file():
            return c
    raise ModelNotInstalledError(
        f"kvpress recipes need the peers venv, and {' or '.join(map(str, candidates))} does not exist: run "
        "`make peers` (creates .venv-peers with kvpress==0.5.5), or point KVSTACK_PEERS_PYTHON at a python "
        "that has kvpress"
    )


def model_reference(model_name: str) -> dict:
    """What the worker loads: the same files ``kvstack.zoo.load`` reads (a bundled model's Hugging Face
    directory, converted once from its GGUF, or the local directory given)."""
    from kvstack import zoo

    if model_name in zoo.ZOO:
        return {"model": str(zoo.path(model_name)), "gguf_file": None}
    if not Path(model_name).is_dir():
        raise InputError(f"model {model_name!r} is neither bundled nor a directory")
    return {"model": str(Path(model_name).resolve()), "gguf_file": None}


def run_jobs(model_name: str, dtype: str, jobs: list[dict], log=None, threads: int | None = None) -> Iterator[dict]:
    """Run ``jobs`` in the kvpress venv; yield one result dict per job as it finishes.

    A job is ``{"id", "press", "kwargs", "context_ids", "question_ids", "continuation_ids", "max_new_tokens"}``.
    A worker that dies yields nothing more; jobs it did not report are simply absent.
    """
    if not jobs:
        return
    python = peers_python()
    request = {**model_reference(model_name), "dtype": dtype, "threads": threads, "jobs": jobs}
    with tempfile.TemporaryDirectory(prefix="kvstack-kvpress-") as tmp:
        req = Path(tmp) / "request.json"
        req.write_text(json.dumps(request), encoding="utf-8")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONNOUSERSITE": "1"}
        env.pop("PYTHONPATH", None)
        proc = subprocess.Popen(
            [str(python), str(WORKER), str(req)], stdout=subprocess.PIPE, stderr=log or sys.stderr, text=True,
            env=env,
        )
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                line = line.strip()
                if not line.startswith("{"):
                    continue
                yield json.loads(line)  # the first line ({"hello": ...}) carries kvpress's versions
        finally:
            proc.stdout.close()
            code = proc.wait()
        if code != 0:
            raise PeerError(
                f"the kvpress worker ({python} {WORKER.name}) exited with code {code}; its traceback is above. "
                "Cells it finished are saved: fix the cause (often the peers venv: `make peers`) and rerun for the rest"
            )
