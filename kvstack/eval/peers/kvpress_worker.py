"""Runs NVIDIA kvpress presses on token ids given by kvstack, in kvpress's own virtual env.

Executed as a script by ``.venv-peers/bin/python`` (never imported by kvstack: importing
kvpress patches transformers' attention for the whole process). Reads one JSON request
from the file named on the command line, writes one JSON line per job to stdout as each
finishes. Only the standard library, torch, transformers and kvpress are used here.

Request: {"model": dir, "gguf_file": name|null, "dtype": "float32", "jobs": [{"id", "press",
"kwargs", "context_ids", "question_ids", "continuation_ids"|null, "max_new_tokens"}]}.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import traceback

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

HUB_HINTS = ("hub", "offline", "huggingface", "hf_hub", "connection", "resolve", "LocalEntryNotFound")


def load(request: dict):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    kwargs = {"dtype": getattr(torch, request.get("dtype", "float32"))}
    if request.get("gguf_file"):
        kwargs["gguf_file"] = request["gguf_file"]
    return AutoModelForCausalLM.from_pretrained(request["model"], **kwargs).eval()


def make_press(name: str, kwargs: dict):
    if name == "none":
        return None
    import kvpress

    cls = getattr(kvpress, name, None)
    if cls is None or not isinstance(cls, type):
        presses = sorted(n for n in dir(kvpress) if n.endswith("Press"))
        raise LookupError(f"kvpress has no press {name!r}; presses: {', '.join(presses)}")
    if isinstance(kwargs.get("press"), str):  # composed (AdaKVPress, CriticalKVPress): press=<scorer>, ratio inside
        kwargs = dict(kwargs)
        inner = make_press(kwargs.pop("press"), {"compression_ratio": kwargs.pop("compression_ratio", 0.0)})
        return cls(press=inner, **kwargs)
    return cls(**kwargs)


def cache_bytes(cache) -> tuple[int, list[int]]:
    """Bytes the DynamicCache's tensors hold, and tokens kept per layer (what kvpress left)."""
    total, kept = 0, []
    for layer in cache.layers:
        for t in (layer.keys, layer.values):
            total += t.numel() * t.element_size()
        kept.append(int(layer.keys.shape[-2]))
    return total, kept


@torch.no_grad()
def run_job(model, job: dict) -> dict:
    from transformers import DynamicCache

    press = make_press(job["press"], job.get("kwargs", {}))
    ctx = torch.tensor(job["context_ids"], dtype=torch.long).view(1, -1)
    length = ctx.shape[1]
    cache = DynamicCache()
    start = time.perf_counter()
    with press(model) if press is not None else contextlib.nullcontext():
        model.model(input_ids=ctx, past_key_values=cache)  # as kvpress's pipeline prefills
    prefill_s = time.perf_counter() - start
    nbytes, kept = cache_bytes(cache)
    out = {"id": job["id"], "status": "ok", "cache_bytes": nbytes, "kept_tokens": kept, "prefill_s": prefill_s}
    q = torch.tensor(job.get("question_ids") or [], dtype=torch.long).view(1, -1)
    start = time.perf_counter()
    if job.get("continuation_ids"):
        ids = torch.cat([q, torch.tensor(job["continuation_ids"], dtype=torch.long).view(1, -1)], dim=1)
        nll, n = _nll(model, cache, ids, length, max(q.shape[1], 1))
        out.update(nll_sum=nll, nll_tokens=n)
    else:
        if job.get("answer_ids"):  # teacher-forced NLL of the gold answer, then the cache is cut back
            kept_now = [int(layer.keys.shape[-2]) for layer in cache.layers]
            ids = torch.cat([q, torch.tensor(job["answer_ids"], dtype=torch.long).view(1, -1)], dim=1)
            nll, n = _nll(model, cache, ids, length, max(q.shape[1], 1))
            out.update(answer_nll_sum=nll, answer_tokens=n)
            for layer, k in zip(cache.layers, kept_now):
                layer.keys, layer.values = layer.keys[..., :k, :], layer.values[..., :k, :]
        out["answer_ids"] = greedy(model, cache, q, length, job["max_new_tokens"])
    out["generate_s"] = time.perf_counter() - start
    return out


def _nll(model, cache, ids: torch.Tensor, context_length: int, first: int) -> tuple[float, int]:
    """Sum of -log p(ids[t]) for t >= first, teacher-forced after the pressed cache at true positions."""
    pos = torch.arange(context_length, context_length + ids.shape[1]).view(1, -1)
    logits = model(input_ids=ids, past_key_values=cache, position_ids=pos).logits[0].double()
    target = ids[0, first:]
    nll = torch.nn.functional.cross_entropy(logits[first - 1 : -1], target, reduction="sum")
    return float(nll), int(target.numel())


def greedy(model, cache, question: torch.Tensor, context_length: int, max_new_tokens: int) -> list[int]:
    """Greedy decoding with explicit positions after the (shorter) pressed cache, as kvpress's pipeline
    (``generate_answer``) does; stops at EOS like ``model.generate`` (kvpress ignores an EOS first token)."""
    pos = torch.arange(context_length, context_length + question.shape[1]).view(1, -1)
    logits = model(input_ids=question, past_key_values=cache, position_ids=pos, logits_to_keep=1).logits
    pos = pos[:, -1:] + 1
    ids = [int(logits[0, -1].argmax())]
    stop = model.generation_config.eos_token_id
    stop = set(stop if isinstance(stop, list) else [stop])
    for i in range(max_new_tokens - 1):
        if ids[-1] in stop:
            break
        logits = model(input_ids=torch.tensor([[ids[-1]]]), past_key_values=cache, position_ids=pos + i).logits
        ids.append(int(logits[0, -1].argmax()))
    return ids


def main(path: str) -> int:
    request = json.loads(open(path, encoding="utf-8").read())
    import kvpress  # noqa: F401 - patches attention before the model is built, as kvpress expects
    import transformers

    print(json.dumps({"hello": True, "kvpress": _version("kvpress"), "transformers": transformers.__version__,
                      "torch": torch.__version__}), flush=True)
    if request.get("threads"):
        torch.set_num_threads(int(request["threads"]))
    model = load(request)
    for job in request["jobs"]:
        try:
            row = run_job(model, job)
        except Exception as exc:  # noqa: BLE001 - reported per job; one bad press must not stop the rest
            text = f"{type(exc).__name__}: {exc}"
            needs_hub = any(h.lower() in text.lower() for h in HUB_HINTS)
            row = {"id": job["id"], "status": "skipped" if needs_hub or isinstance(exc, LookupError) else "error",
                   "reason": ("this press needs artefacts from the Hugging Face hub, which is unreachable here: "
                              if needs_hub else "") + text[:500]}
            if row["status"] == "error":
                traceback.print_exc(file=sys.stderr)
        print(json.dumps(row), flush=True)
    return 0


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
