"""Wire codecs on real KV: SmolLM2-135M's cache of a Paul Graham essay, under several recipes.

Prints three markdown tables:
  1. file bytes per recipe and codec, and how far each is below 8-bit quantization (int8, raw);
  2. the quantized codes alone: packed vs entropy coded (ans), and the delta transforms;
  3. codec throughput on one CPU core, in MB/s of the dense fp16 KV the cache stands for.

    python benchmarks/wire_codecs.py                 # up to 2048 tokens of the essay 'worked'
    python benchmarks/wire_codecs.py --tokens 1024 --essay addiction
    taskset -c 0 python benchmarks/wire_codecs.py --tables 3   # throughput only, pinned to one core
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

RECIPES = ("identity", "int8", "int4", "int4:g32", "int2", "kivi:4", "kivi:2", "snapkv:0.25 > int8",
           "snapkv:0.25 > int4", "snapkv:0.25 > int2", "snapkv:0.25 > kivi:2")
CODECS = (("raw", "none"), ("zstd", "none"), ("colzstd", "none"), ("colzstd", "auto"), ("ans", "none"),
          ("ans", "auto"), ("range", "auto"))
THROUGHPUT = (("identity", ("raw", "zstd")), ("int8", ("colzstd",)),
              ("int4", ("raw", "zstd", "colzstd", "ans", "range")), ("int2", ("colzstd", "ans")),
              ("kivi:2", ("zstd", "colzstd", "ans")))


def timed(fn, repeat: int = 1) -> tuple[float, float, object]:
    """Best wall seconds, best CPU seconds of this process, and the result. On a shared machine
    wall time includes waiting for a core; CPU time is what the work costs one core."""
    wall = cpu = float("inf")
    out = None
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        wall, cpu = min(wall, time.perf_counter() - t), min(cpu, time.process_time() - c)
    return wall, cpu, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--essay", default="worked")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=2, help="timing repeats (best is reported)")
    ap.add_argument("--tables", default="123", help="1 and 2: sizes, 3: throughput (default 123: all)")
    args = ap.parse_args()
    torch.set_num_threads(1)

    import kvstack
    from kvstack import wire
    from kvstack.eval.texts import essay
    from kvstack.hf.model import model_info
    from kvstack.hf.prefill import prefill
    from kvstack.stack import NEED_WINDOW_QUERIES, Recipe, StageContext
    from kvstack.zoo import load

    model, tok = load("smollm2-135m")
    ids = tok(essay(args.essay), return_tensors="pt").input_ids[0][: args.tokens]
    info = model_info(model)
    pre = prefill(model, info, ids, frozenset({NEED_WINDOW_QUERIES}), window_queries=32)
    ctx = StageContext(info.num_query_heads, info.num_kv_heads, info.head_dim, info.num_layers, pre.captures)
    elements = sum(2 * layer.keys.shape[0] * layer.keys.shape[1] for layer in pre.cache.layers)
    fp16 = 2 * elements
    print(f"SmolLM2-135M, essay '{args.essay}', {ids.numel()} tokens: dense fp16 KV {fp16 / 1e6:.2f} MB; "
          f"torch {torch.__version__}, kvstack {kvstack.__version__}, {platform.processor() or platform.machine()}, "
          f"load average {os.getloadavg()[0]:.1f}\n")

    caches = {r: Recipe.parse(r).apply(pre.cache, ctx) for r in RECIPES}
    if "1" in args.tables or "2" in args.tables:
        sizes_tables(wire, caches)
    if "3" in args.tables:
        throughput_table(wire, caches, fp16, args.repeat)


def sizes_tables(wire, caches) -> None:
    blobs = {(r, c, d): wire.encode(caches[r], codes=c, delta=d) for r in RECIPES for c, d in CODECS}
    int8_bytes = len(blobs[("int8", "raw", "none")])

    print("### 1. File bytes (MB) per recipe and codec (codes codec/delta; other tensors zstd); "
          "x = int8 raw file / best file\n")
    print("| recipe | in memory | " + " | ".join(f"{c}/{d}" for c, d in CODECS) + " | x below int8 |")
    print("| --- | --- | " + " | ".join("---" for _ in CODECS) + " | --- |")
    for r in RECIPES:
        sizes = [len(blobs[(r, c, d)]) for c, d in CODECS]
        print(f"| {r} | {caches[r].nbytes / 1e6:.3f} | " + " | ".join(f"{s / 1e6:.3f}" for s in sizes)
              + f" | {int8_bytes / min(sizes):.2f} |")

    print("\n### 2. Quantized codes only (MB): packed vs coded; x = packed / coded\n")
    print("| recipe | packed | zstd | colzstd none | colzstd seq | colzstd auto | ans none | ans seq | ans anchor "
          "| ans auto | x colzstd auto | x ans auto |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in RECIPES:
        if r == "identity":
            continue
        row = {}
        for c, d in (("raw", "none"), ("zstd", "none"), ("colzstd", "none"), ("colzstd", "seq"), ("colzstd", "auto"),
                     ("ans", "none"), ("ans", "seq"), ("ans", "anchor"), ("ans", "auto")):
            blob = blobs.get((r, c, d)) or wire.encode(caches[r], codes=c, delta=d)
            row[(c, d)] = wire.byte_breakdown(blob).get("codes", 0)
        vals = list(row.values())
        packed = row[("raw", "none")]
        print(f"| {r} | " + " | ".join(f"{v / 1e6:.3f}" for v in vals)
              + f" | {packed / row[('colzstd', 'auto')]:.3f} | {packed / row[('ans', 'auto')]:.3f} |")


def throughput_table(wire, caches, fp16: int, repeat: int) -> None:
    print("\n### 3. Throughput, one core: MB/s of dense fp16 KV (encode = cache -> bytes, decode = bytes -> cache)\n")
    print("| recipe | codes codec (delta auto; tensors zstd) | MB on the wire | encode MB/s wall | decode MB/s wall "
          "| encode MB/s CPU | decode MB/s CPU |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    from kvstack.wire.arrays import CODE_CODECS

    for r, codecs in THROUGHPUT:
        for c in codecs:
            if c not in CODE_CODECS:  # an older kvstack (before/after comparisons run this script on both)
                print(f"| {r} | {c} | (not in this kvstack) | - | - | - | - |")
                continue
            # "raw": every array raw, codes and tensors alike (pure serialisation)
            opts = dict(codes="raw", tensors="raw") if c == "raw" else dict(codes=c, delta="auto")
            enc, enc_cpu, blob = timed(lambda r=r, opts=opts: wire.encode(caches[r], **opts), repeat)
            dec, dec_cpu, back = timed(lambda blob=blob: wire.decode(blob), repeat)
            assert wire.cache_differences(caches[r], back) == []
            name = "all raw" if c == "raw" else c
            rates = (fp16 / t / 1e6 for t in (enc, dec, enc_cpu, dec_cpu))
            print(f"| {r} | {name} | {len(blob) / 1e6:.2f} | " + " | ".join(f"{x:.0f}" for x in rates) + " |",
                  flush=True)


if __name__ == "__main__":
    main()
