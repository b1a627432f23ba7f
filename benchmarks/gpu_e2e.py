"""End to end on the GPU: a random-weight model of Llama-3.1-8B's shape at a long context.

``python benchmarks/gpu_e2e.py [--context 32768] [--tokens 64] [--recipe "snapkv:0.25 > int4:token,norot"]
[--loop-only]``

Measures, for the full bf16 cache (transformers' DynamicCache through ``model.generate``)
and for a kvstack recipe (``kvstack.compress`` then ``kvstack.generate``, decode steps
through the kernels, and once more through the generic dequantize-everything path):
prefill time, decode tokens per second (from the difference between a 1-token and an
N-token generation, so prefill cancels out), peak GPU memory during prefill and during
decode, and cache bytes. Weights are random - speed and memory do not depend on them -
so no accuracy is claimed here. From the measured bytes per token and the measured
fixed memory, it derives the longest context whose cache fits on the device.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

import kvstack
from kvstack.hf.compat import cache_kwargs

GiB = 1 << 30


def llama31_8b_shape() -> LlamaConfig:
    return LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072, rope_theta=500000.0,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )


def timed(fn) -> tuple[float, object]:
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t, out


def decode_rate(run, tokens: int) -> tuple[float, float]:
    """(seconds per decode step, peak GiB) from a 1-token and a ``tokens``-token run of ``run(n)``."""
    run(1)  # warm-up: kernels compiled, allocator settled
    t1, _ = timed(lambda: run(1))
    torch.cuda.reset_peak_memory_stats()
    tn, _ = timed(lambda: run(tokens))
    return (tn - t1) / (tokens - 1), torch.cuda.max_memory_allocated() / GiB


def step_loop(model, cache, first: torch.Tensor, n: int) -> tuple[float, float]:
    """(seconds per greedy step, host seconds per step) of a plain ``model(...)`` loop over ``cache``.

    Host time: until ``model(...)`` returns, before waiting for the GPU. When it is close
    to the step time, the step is bound by Python and launches, not by the kernels.
    """
    ids = first.view(1, 1)
    times, host = [], []
    for _ in range(n):
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = model(input_ids=ids, **cache_kwargs(cache), use_cache=True, logits_to_keep=1)
        host.append(time.perf_counter() - t)
        ids = out.logits[:, -1:].argmax(-1)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    median = lambda xs: sorted(xs[1:])[len(xs[1:]) // 2]
    return median(times), median(host)


def loop_only(model, ids: torch.Tensor, question: torch.Tensor, recipe: str, res: dict, steps: int = 24) -> None:
    """Plain step loops only (full cache, then the recipe through the kernels): the per-step overhead, quickly."""
    with torch.no_grad():
        dyn = DynamicCache()
        model(input_ids=ids.view(1, -1), **cache_kwargs(dyn), use_cache=True, logits_to_keep=1)
        full, full_host = step_loop(model, dyn, question, steps)
        del dyn
        torch.cuda.empty_cache()
        kv = kvstack.compress(model, ids, recipe, chunk_size=4096)
        with kvstack.hf.enable(model):
            ours, ours_host = step_loop(model, kvstack.hf.CompressedCache(kv, model.dtype), question, steps)
    res.update(full_loop_step_ms=full * 1e3, full_loop_host_ms=full_host * 1e3, kvstack_loop_step_ms=ours * 1e3,
               kvstack_loop_host_ms=ours_host * 1e3, kvstack_cache_bytes=kv.nbytes)
    print(f"\n| plain decode loop, {res['context']} tokens, median of {steps - 1} steps | ms/step | host ms/step |")
    print("|---|---|---|")
    print(f"| full cache (DynamicCache) | {full * 1e3:.1f} | {full_host * 1e3:.1f} |")
    print(f"| `{recipe}` through the kernels | {ours * 1e3:.1f} | {ours_host * 1e3:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--context", type=int, default=32768)
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per timed generation")
    ap.add_argument("--recipe", default="snapkv:0.25 > int4:token,norot")
    ap.add_argument("--json", help="write the numbers here")
    ap.add_argument("--loop-only", action="store_true", help="only the plain step loops (full vs recipe): ~1 minute")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(llama31_8b_shape()).eval()
    torch.set_default_dtype(torch.float32)
    model.generation_config.pad_token_id = 0
    weights = torch.cuda.memory_allocated() / GiB
    T = args.context
    ids = torch.randint(3, 128000, (T,), device="cuda")
    question = torch.randint(3, 128000, (1,), device="cuda")
    gen = dict(do_sample=False, temperature=None, top_p=None, top_k=None, pad_token_id=0)
    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, context=T, recipe=args.recipe,
               weights_gib=weights, total_gib=torch.cuda.get_device_properties(0).total_memory / GiB)

    if args.loop_only:
        loop_only(model, ids, question, args.recipe, res)
        print(json.dumps(res, indent=1))
        return
    full_ids = torch.cat([ids, question]).view(1, -1)
    with torch.no_grad():
        run_full = lambda n: model.generate(full_ids, attention_mask=torch.ones_like(full_ids), max_new_tokens=n,
                                            min_new_tokens=n, **gen)
        torch.cuda.reset_peak_memory_stats()
        t_prefill, _ = timed(lambda: run_full(1))
        res["full_prefill_s"] = t_prefill
        res["full_prefill_peak_gib"] = torch.cuda.max_memory_allocated() / GiB
        step, peak = decode_rate(run_full, args.tokens)
        dyn = DynamicCache()
        model(input_ids=ids.view(1, -1), **cache_kwargs(dyn), use_cache=True, logits_to_keep=1)
        res["full_loop_step_ms"] = step_loop(model, dyn, question, 16)[0] * 1e3
        del dyn
        torch.cuda.empty_cache()
    res.update(full_step_ms=step * 1e3, full_tok_s=1 / step, full_decode_peak_gib=peak)
    cfg = model.config
    res["full_cache_bytes_per_token"] = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * 128 * 2
    print(f"full: prefill {t_prefill:.1f}s, {1 / step:.1f} tok/s, peak {peak:.1f} GiB", flush=True)

    torch.cuda.reset_peak_memory_stats()
    t_compress, kv = timed(lambda: kvstack.compress(model, ids, args.recipe, chunk_size=4096))
    res["kvstack_compress_s"] = t_compress
    res["kvstack_prefill_peak_gib"] = torch.cuda.max_memory_allocated() / GiB
    res["kvstack_cache_bytes"] = kv.nbytes
    res["kvstack_bytes_per_token"] = kv.nbytes / T
    res["kvstack_ratio"] = kv.dense_nbytes / kv.nbytes
    torch.cuda.empty_cache()
    with torch.no_grad():
        run_kv = lambda n: kvstack.generate(model, kv, question, max_new_tokens=n, min_new_tokens=n)
        step, peak = decode_rate(run_kv, args.tokens)
        res.update(kvstack_step_ms=step * 1e3, kvstack_tok_s=1 / step, kvstack_decode_peak_gib=peak)
        print(f"kvstack: compress {t_compress:.1f}s, {kv.nbytes / GiB:.2f} GiB cache ({res['kvstack_ratio']:.1f}x), "
              f"{1 / step:.1f} tok/s, peak {peak:.1f} GiB", flush=True)
        with kvstack.hf.enable(model):
            res["kvstack_loop_step_ms"] = step_loop(model, kvstack.hf.CompressedCache(kv, model.dtype), question,
                                                    16)[0] * 1e3
        os.environ["KVSTACK_KERNELS"] = "0"
        step_g, peak_g = decode_rate(run_kv, min(args.tokens, 9))
        os.environ.pop("KVSTACK_KERNELS")
        res.update(generic_step_ms=step_g * 1e3, generic_tok_s=1 / step_g, generic_decode_peak_gib=peak_g)
        print(f"kvstack without kernels: {1 / step_g:.1f} tok/s, peak {peak_g:.1f} GiB; plain step loops: full "
              f"{res['full_loop_step_ms']:.1f} ms, kvstack {res['kvstack_loop_step_ms']:.1f} ms", flush=True)

    # longest context whose cache fits: memory not taken by the cache at this context stays fixed
    total = res["total_gib"] * GiB
    full_fixed = res["full_decode_peak_gib"] * GiB - res["full_cache_bytes_per_token"] * T
    kv_fixed = res["kvstack_decode_peak_gib"] * GiB - kv.nbytes
    res["full_max_context"] = int((total - full_fixed) / res["full_cache_bytes_per_token"])
    res["kvstack_max_context_decode"] = int((total - kv_fixed) / res["kvstack_bytes_per_token"])
    # compress() prefills with the full cache of the context before it compresses, so the
    # context it can build is bounded like the full cache's prefill
    pre_fixed = res["kvstack_prefill_peak_gib"] * GiB - res["full_cache_bytes_per_token"] * T
    res["kvstack_max_context_prefill"] = int((total - pre_fixed) / res["full_cache_bytes_per_token"])
    print(json.dumps(res, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
