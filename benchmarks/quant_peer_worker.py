"""transformers' own ``QuantizedCache`` (optimum-quanto backend) on token ids given by quant_report.py.

Run by the peers venv's python (``.venv-peers``, see requirements-peers-quant.txt), never imported
by kvstack. Same request/answer protocol and the same decoding/NLL code as the kvpress worker
(``kvstack/eval/peers/kvpress_worker.py``, loaded by path: ``load``, ``greedy``, ``_nll``), so both
peers see the prompts and positions kvstack sees. Per job: the context is prefilled into a fresh
``QuantizedCache(backend="quanto", nbits, q_group_size, residual_length)`` (the prompt is quantized
at once, as transformers does), then the gold answer's NLL (or the continuation's) is scored, and
greedy decoding runs on a second fresh prefill so the scoring does not leak into it.

Bytes: every tensor the quantized layers hold (packed codes, scales, shifts, recursively through
quanto's tensor subclasses) plus the dense residual, right after the context prefill.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kvstack" / "eval" / "peers"))
import kvpress_worker as kw  # noqa: E402  (stdlib + torch + transformers only; kvpress is imported by its main)


def tensor_bytes(t) -> int:
    """Bytes of a tensor, through tensor subclasses (``__tensor_flatten__``) down to plain storage."""
    if t is None:
        return 0
    if isinstance(t, tuple | list):
        return sum(tensor_bytes(x) for x in t)
    if isinstance(t, dict):
        return sum(tensor_bytes(x) for x in t.values() if isinstance(x, torch.Tensor))
    flatten = getattr(type(t), "__tensor_flatten__", None)
    if flatten is not None and type(t) is not torch.Tensor:
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def cache_bytes(cache) -> int:
    total = 0
    for layer in cache.layers:
        total += tensor_bytes(getattr(layer, "_quantized_keys", None)) + tensor_bytes(
            getattr(layer, "_quantized_values", None))
        for t in (layer.keys, layer.values):
            total += tensor_bytes(t) if isinstance(t, torch.Tensor) else 0
    return total


def fresh(model, job: dict):
    from transformers import QuantizedCache

    cache = QuantizedCache(backend="quanto", config=model.config, nbits=job["nbits"], q_group_size=job["group"],
                           residual_length=job["residual"])
    ctx = torch.tensor(job["context_ids"], dtype=torch.long).view(1, -1)
    model.model(input_ids=ctx, past_key_values=cache)
    return cache, ctx.shape[1]


@torch.no_grad()
def run_job(model, job: dict) -> dict:
    start = time.perf_counter()
    cache, length = fresh(model, job)
    out = {"id": job["id"], "status": "ok", "cache_bytes": cache_bytes(cache), "prefill_s": time.perf_counter() - start}
    q = torch.tensor(job.get("question_ids") or [], dtype=torch.long).view(1, -1)
    start = time.perf_counter()
    if job.get("continuation_ids"):
        ids = torch.cat([q, torch.tensor(job["continuation_ids"], dtype=torch.long).view(1, -1)], dim=1)
        out["nll_sum"], out["nll_tokens"] = kw._nll(model, cache, ids, length, max(q.shape[1], 1))
    else:
        if job.get("answer_ids"):  # scored, then the cache is put back exactly (its tensors are replaced, not edited)
            saved = [dict(vars(layer)) for layer in cache.layers]
            ids = torch.cat([q, torch.tensor(job["answer_ids"], dtype=torch.long).view(1, -1)], dim=1)
            out["answer_nll_sum"], out["answer_tokens"] = kw._nll(model, cache, ids, length, max(q.shape[1], 1))
            for layer, state in zip(cache.layers, saved, strict=True):
                vars(layer).clear()
                vars(layer).update(state)
        out["answer_ids"] = kw.greedy(model, cache, q, length, job["max_new_tokens"])
    out["generate_s"] = time.perf_counter() - start
    return out


def main(path: str) -> int:
    from importlib.metadata import version

    import transformers

    request = json.loads(Path(path).read_text(encoding="utf-8"))
    print(json.dumps({"hello": True, "optimum-quanto": version("optimum-quanto"),
                      "transformers": transformers.__version__, "torch": torch.__version__}), flush=True)
    if request.get("threads"):
        torch.set_num_threads(int(request["threads"]))
    model = kw.load(request)
    for job in request["jobs"]:
        print(json.dumps(run_job(model, job)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
