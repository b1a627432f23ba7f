"""End to end on the GPU: decode tokens/s of a random-weight Llama-3.1-8B-shaped model, by batch and context.

``python benchmarks/gpu_e2e.py [--contexts 8192 32768 131072] [--batch 1 8 32] [--tokens 48]
[--recipes int4 "snapkv:0.25 > int4"] [--budget-s 450] [--json PATH]``

For every (context, batch) cell, cheapest first, one line is printed as soon as it is measured:

* ``full / generate``: the full bf16 cache (transformers' DynamicCache) through ``model.generate``;
* ``full / graphed loop``: the same cache as transformers' StaticCache in kvstack's graphed step loop
  (:class:`kvstack.hf.graphs.GraphedStep`: one CUDA graph, replayed), the fastest way to run it;
* ``<recipe> / generate``: ``kvstack.generate(..., graphs=True)`` over a KVBatch of B sequences;
* ``<recipe> / graphed loop``: the same cache in the same loop as the full cache's (steady state);
* at batch 1, ``<recipe> / generate eager``: ``kvstack.generate`` through ``model.generate``, no graphs
  (what a step cost before), and whether its tokens equal the graphed call's.

``generate`` rows: (time of an N-token call - time of a 1-token call) / (N - 1), so prefill and the
first step cancel out (a graph capture stays in: one more eager step per call). ``graphed loop``
rows: CUDA-event time of ``--loop-steps`` replayed steps after the capture. tokens/s = batch /
step time. Every sequence of a batch has the same random context (compressed or prefilled once,
then copied B times): speed and memory do not depend on the values, and B prefills would not fit
the time. Peak memory is ``torch.cuda.max_memory_allocated`` during the cell (weights included;
kvstack's rows: the B-sequence copy its batched kernel plan makes, plus the one compressed cache).
A cell whose cache cannot fit is not run ("does not fit"); an out-of-memory error is reported as
such. At the end, from the measured bytes per sequence and fixed memory: the largest batch that
fits, per context and cache. Weights are random: no accuracy is claimed.
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, StaticCache

import kvstack
from kvstack.hf.batch_cache import BatchedCompressedCache, batch_layout
from kvstack.hf.cache import CompressedCache
from kvstack.hf.compat import cache_kwargs, position_kwargs
from kvstack.hf.graphs import GraphedStep
from kvstack.kv_batch import KVBatch

GiB = 1 << 30
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU only for --tiny, a check of this script
GEN = dict(do_sample=False, temperature=None, top_p=None, top_k=None, pad_token_id=0)


def llama31_8b_shape() -> LlamaConfig:
    return LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=262144, rope_theta=500000.0,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )


def tiny_shape() -> LlamaConfig:
    """A few-MB model of the same family: ``--tiny`` checks this script anywhere in seconds."""
    return LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=8192,
                       bos_token_id=1, eos_token_id=2, pad_token_id=0)


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def peak_bytes(reset: bool = False) -> int:
    if DEVICE != "cuda":
        return 0
    if reset:
        torch.cuda.reset_peak_memory_stats()
    return torch.cuda.max_memory_allocated()


def timed(fn) -> tuple[float, object]:
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t, out


def generate_step(run, tokens: int) -> float:
    """Seconds per decode step of ``run(n)`` (an n-token generation), from a 1-token and a ``tokens``-token call."""
    run(1)  # warm-up: kernels compiled, allocator settled
    t1, _ = timed(lambda: run(1))
    tn, _ = timed(lambda: run(tokens))
    return (tn - t1) / (tokens - 1)


@torch.no_grad()
def loop_step(model, cache, ids: torch.Tensor, pos: torch.Tensor, steps: int) -> float:
    """Seconds per replayed step of the graphed loop over ``cache``, after the prompt block ``ids``."""
    out = model(input_ids=ids, position_ids=pos, **position_kwargs(model, pos),
                **cache_kwargs(cache), use_cache=True, logits_to_keep=1)
    tok, pos = out.logits[:, -1].argmax(-1, keepdim=True), pos[:, -1:] + 1
    step = GraphedStep(model, cache)
    for _ in range(2):  # the bucket's eager step, then the capture
        tok, pos = step(tok, pos).argmax(-1, keepdim=True), pos + 1

    def steady():
        nonlocal tok, pos
        for _ in range(steps):
            tok, pos = step(tok, pos).argmax(-1, keepdim=True), pos + 1

    seconds, _ = timed(steady)
    if DEVICE == "cuda" and step.counts["replayed"] < steps:
        raise RuntimeError(f"the loop was not replayed at every step: {step.counts}")
    return seconds / steps


@torch.no_grad()
def prefill_source(model, ids: torch.Tensor, chunk: int = 8192) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One sequence's full cache, layer by layer, kept on the CPU (copied to the GPU per cell)."""
    dyn = DynamicCache()
    for a in range(0, ids.numel(), chunk):
        model(input_ids=ids[a : a + chunk].view(1, -1), **cache_kwargs(dyn), use_cache=True, logits_to_keep=1)
    out = [(layer.keys.cpu(), layer.values.cpu()) for layer in dyn.layers]
    del dyn
    return out


def batched(source, b: int, cache) -> None:
    """Fill ``cache`` with ``b`` copies of the source sequence (one layer at a time on the GPU; real copies,
    not expanded views, which a DynamicCache would keep as they are)."""
    for li, (k, v) in enumerate(source):
        k, v = k.to(DEVICE), v.to(DEVICE)
        t = k.shape[2]
        cache.update(k.expand(b, -1, -1, -1).contiguous(), v.expand(b, -1, -1, -1).contiguous(), li,
                     {"cache_position": torch.arange(t, device=DEVICE)})
        del k, v


def free() -> None:
    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.t0 = time.perf_counter()
        torch.manual_seed(0)
        torch.set_default_dtype(torch.bfloat16)
        with torch.device(DEVICE):
            self.model = LlamaForCausalLM(tiny_shape() if args.tiny else llama31_8b_shape()).eval()
        torch.set_default_dtype(torch.float32)
        self.model.generation_config.pad_token_id = 0
        cuda = DEVICE == "cuda"
        self.weights = torch.cuda.memory_allocated() if cuda else 0
        self.total = torch.cuda.get_device_properties(0).total_memory if cuda else 1 << 50
        self.device_name = torch.cuda.get_device_name() if cuda else "cpu"
        cfg = self.model.config
        self.full_per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 2
        self.vocab = cfg.vocab_size
        self.rows: list[dict] = []
        import transformers
        import triton

        print(f"device {self.device_name}, torch {torch.__version__}, transformers {transformers.__version__}, "
              f"triton {triton.__version__}, weights {self.weights / GiB:.2f} GiB of {self.total / GiB:.1f} GiB",
              flush=True)
        print("| context | batch | cache | path | tok/s | ms/step | peak GiB | cache GiB | note |", flush=True)
        print("|---|---|---|---|---|---|---|---|---|", flush=True)

    def over_budget(self) -> bool:
        return time.perf_counter() - self.t0 > self.args.budget_s

    def cell(self, ctx: int, b: int, cache_name: str, path: str, cache_bytes: float, fn) -> None:
        """Run ``fn() -> (seconds per step, note)`` unless it cannot fit or the time is up; print a row."""
        row = dict(context=ctx, batch=b, cache=cache_name, path=path, cache_gib=cache_bytes / GiB)
        if self.over_budget():
            row["note"] = "skipped: time budget"
        elif self.weights + cache_bytes + 2 * GiB > self.total:
            row["note"] = "does not fit"
        else:
            free()
            peak_bytes(reset=True)
            try:
                step, note = fn()
                row.update(ms_step=step * 1e3, tok_s=b / step, peak_gib=peak_bytes() / GiB, note=note)
            except torch.cuda.OutOfMemoryError:
                row["note"] = "out of memory"
            except Exception as exc:  # noqa: BLE001 - one failing cell must not lose the others' numbers
                row["note"] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
            free()
        self.rows.append(row)
        num = lambda k, f: format(row[k], f) if k in row else "-"
        print(f"| {ctx} | {b} | {cache_name} | {path} | {num('tok_s', '.1f')} | {num('ms_step', '.2f')} | "
              f"{num('peak_gib', '.1f')} | {row['cache_gib']:.2f} | {row.get('note', '')} |", flush=True)

    def full_cells(self, ctx: int, ids: torch.Tensor, question: torch.Tensor, source) -> None:
        model, tokens = self.model, self.args.tokens
        for b in self.args.batch:
            cache_bytes = b * ctx * self.full_per_token

            def generate(b=b):
                dyn = DynamicCache()
                batched(source, b, dyn)
                full_ids = torch.cat([ids, question]).view(1, -1).expand(b, -1).contiguous()
                mask = torch.ones_like(full_ids)

                def run(n):
                    model.generate(full_ids, attention_mask=mask, **cache_kwargs(dyn), max_new_tokens=n,
                                   min_new_tokens=n, **GEN)
                    dyn.crop(ctx - dyn.get_seq_length())  # negative: drop the new tokens (5.25 refuses positive)

                return generate_step(run, tokens), ""

            def loop(b=b):
                static = StaticCache(config=model.config, max_cache_len=ctx + self.args.loop_steps + 16)
                batched(source, b, static)
                pos = torch.full((b, 1), ctx, device=DEVICE)
                return loop_step(model, static, question.view(1, 1).expand(b, 1), pos, self.args.loop_steps), ""

            self.cell(ctx, b, "full bf16", "generate", cache_bytes, generate)
            self.cell(ctx, b, "full bf16", "graphed loop", cache_bytes, loop)

    def kvstack_cells(self, ctx: int, ids: torch.Tensor, question: torch.Tensor, recipe: str) -> None:
        model, tokens = self.model, self.args.tokens
        if self.over_budget():
            return
        kv = kvstack.compress(model, ids, recipe, chunk_size=4096)
        free()
        for b in self.args.batch:
            cache_bytes = (b + 1) * kv.nbytes  # the batched plan's copy of B sequences + the compressed cache
            batch = kv if b == 1 else KVBatch([kv] * b)
            qs = question.cpu() if b == 1 else [question.cpu()] * b
            graphed = {}

            def generate(batch=batch, qs=qs):
                def run(n):
                    graphed["tokens"] = kvstack.generate(model, batch, qs, max_new_tokens=n, min_new_tokens=n,
                                                         graphs=True)

                return generate_step(run, tokens), ""

            def eager(batch=batch, qs=qs):
                step = generate_step(lambda n: kvstack.generate(model, batch, qs, max_new_tokens=n, min_new_tokens=n),
                                     min(tokens, 17))
                if "tokens" not in graphed:
                    return step, ""
                want = kvstack.generate(model, batch, qs, max_new_tokens=tokens, min_new_tokens=tokens)
                return step, f"tokens = graphed call's: {bool(torch.equal(want, graphed['tokens']))}"

            def loop(b=b):
                with kvstack.hf.enable(model):
                    if b == 1:
                        cache = CompressedCache(kv, model.dtype)
                        return loop_step(model, cache, question.view(1, 1), torch.full((1, 1), ctx, device=DEVICE),
                                         self.args.loop_steps), ""
                    layout = batch_layout([kv.context_ids] * b, [question.cpu()] * b, 0)  # no padding: same lengths
                    cache = BatchedCompressedCache([kv] * b, layout, model.dtype)
                    pos = torch.full((b, 1), ctx, device=DEVICE)
                    return loop_step(model, cache, question.view(1, 1).expand(b, 1), pos, self.args.loop_steps), ""

            self.cell(ctx, b, recipe, "generate", cache_bytes, generate)
            self.cell(ctx, b, recipe, "graphed loop", cache_bytes, loop)
            if b == 1:
                self.cell(ctx, b, recipe, "generate eager", cache_bytes, eager)

    def largest_batches(self) -> dict:
        """Per (context, cache): the batch whose cache still fits, from the largest measured cell's memory."""
        out = {}
        for row in self.rows:
            if "peak_gib" not in row:
                continue
            key = (row["context"], row["cache"])
            per_seq = row["cache_gib"] * GiB / (row["batch"] + (0 if row["cache"] == "full bf16" else 1))
            fixed = row["peak_gib"] * GiB - row["cache_gib"] * GiB
            fits = int((self.total - fixed) / per_seq)
            if key not in out or row["batch"] > out[key]["from_batch"]:
                out[key] = dict(largest_batch=fits, from_batch=row["batch"], per_sequence_gib=per_seq / GiB)
        return out

    def run(self) -> None:
        for ctx in self.args.contexts:
            if self.over_budget():
                print(f"context {ctx}: skipped (time budget)", flush=True)
                continue
            ids = torch.randint(3, self.vocab - 1, (ctx,), device=DEVICE)
            question = torch.randint(3, self.vocab - 1, (1,), device=DEVICE)
            source = prefill_source(self.model, ids)
            free()
            self.full_cells(ctx, ids, question, source)
            del source
            free()
            for recipe in self.args.recipes:
                self.kvstack_cells(ctx, ids, question, recipe)
        fits = self.largest_batches()
        print("\n| context | cache | largest batch that fits (derived) | from batch | GiB per sequence |")
        print("|---|---|---|---|---|")
        for (ctx, cache), f in sorted(fits.items()):
            print(f"| {ctx} | {cache} | {f['largest_batch']} | {f['from_batch']} | {f['per_sequence_gib']:.2f} |")
        print(f"elapsed {time.perf_counter() - self.t0:.0f} s", flush=True)
        if self.args.json:
            with open(self.args.json, "w") as fh:
                json.dump(dict(device=self.device_name, torch=torch.__version__, rows=self.rows,
                               largest=[dict(context=c, cache=k, **f) for (c, k), f in sorted(fits.items())]),
                          fh, indent=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", type=int, nargs="+", default=[8192, 32768, 131072])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--tokens", type=int, default=48, help="new tokens of the timed generate calls (< 64: one bucket)")
    ap.add_argument("--loop-steps", type=int, default=32, help="replayed steps timed in the graphed loop")
    ap.add_argument("--recipes", nargs="+", default=["int4", "snapkv:0.25 > int4"])
    ap.add_argument("--budget-s", type=float, default=450.0,
                    help="start no cell after this many seconds (a device call is killed at 600)")
    ap.add_argument("--json", help="write every row here")
    ap.add_argument("--tiny", action="store_true", help="a tiny model (checks this script; runs on a CPU too)")
    args = ap.parse_args()
    args.contexts, args.batch = sorted(args.contexts), sorted(args.batch)
    Bench(args).run()


if __name__ == "__main__":
    main()
