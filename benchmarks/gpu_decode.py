"""Decode attention over a packed cache: kvstack's kernels against PyTorch SDPA (flash, fp16), eager and graphed.

Run on a CUDA machine: ``python benchmarks/gpu_decode.py [--quick] [--sweep] [--json OUT]``.

One decode step of GQA 8:1 (8 KV heads, 64 query heads, head_dim 128) at batch 1 and 16 and
32K / 128K tokens, four cache formats: three the Gluon kernel reads (``kt128 v128``: one scale and
zero per row, INT4 and INT8; ``kt64 v64``: two a row, ``int4:token,norot``, the default until 2026-12-07)
and KIVI's per-channel keys (``kc64``), which only the Triton kernel reads. Every time is the median of CUDA-event
timings after warm-up (``triton.testing.do_bench``, L2 flushed between runs), taken two ways:

* **eager**: the Python call as a user makes it - at batch 1 the host's launch work (two Triton
  launches, ~20-40 us) can exceed the GPU's, so this is an upper bound;
* **graph**: the same call captured once in a CUDA graph and replayed - the GPU time alone, what a
  serving loop that graphs its decode step (vLLM, SGLang, ``torch.compile``) pays. SDPA is graphed too.

Reference points measured in the same run: the device's copy bandwidth (bytes read + written),
SDPA over the fp16 cache (native GQA or GQA folded into query rows, the faster), and the
QuantizedCache strategy (dequantize the whole cache with kvstack's kernel, then SDPA - a lower
bound on transformers' own path). ``rel err``: against float32 SDPA over the dequantized cache.
"""

from __future__ import annotations

import argparse
import json
import platform

import torch
import triton
from gpu_kernels import _sdpa_fp16, bench, copy_bandwidth, decode_case, reference_sdpa
from torch.nn.attention import SDPBackend, sdpa_kernel

from kvstack.kernels import gluon_decode, triton_decode, triton_quant

# (name, bits, key group, key axis, value group)
FORMATS = [("int4 kt128 v128", 4, 128, "token", 128), ("int8 kt128 v128", 8, 128, "token", 128),
           ("int4 kt64 v64", 4, 64, "token", 64), ("int4 kc64 v128", 4, 64, "channel", 128)]


def graph_ms(fn) -> float:
    """Median ms of replaying ``fn`` captured in a CUDA graph (warmed up on a side stream first)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return bench(graph.replay)


def sweep(q, kp, vp, seg, t_fp16: float) -> list[dict]:
    """The Gluon kernel's tile rows x slices per multiprocessor, graphed (``--sweep``)."""
    out = []
    for block in (32, 64, 128):
        for per_sm in (4, 8, 12, 16, 32):
            plan = triton_decode.DecodePlan(kp, vp, seg, gluon=True, gluon_block=block, gluon_programs=per_sm)
            ms = graph_ms(lambda: plan(q))
            out.append(dict(block=block, per_sm=per_sm, splits=plan.gluon_splits, ms=ms, speedup=t_fp16 / ms))
            print(f"    sweep block={block} per_sm={per_sm} splits={plan.gluon_splits}: {ms:.3f} ms "
                  f"({t_fp16 / ms:.2f}x)", flush=True)
    return out


def decode_rows(bw: float, quick: bool, do_sweep: bool) -> list[dict]:
    Hkv, G, D = 8, 8, 128
    cases = [(16, 32768), (1, 32768)] if quick else [(16, 32768), (16, 131072), (1, 32768), (1, 131072)]
    rows = []
    for B, T in cases:
        S, seg, k, v, q = decode_case(B, T, Hkv, G, D)
        t_fp16, how, sdpa = _sdpa_fp16(k, v, q, B, Hkv, G, T, D)
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # captured with the flash backend, as it was timed
            g_fp16 = graph_ms(sdpa)
        fp16_bytes = 2 * k.numel() * 2
        print(f"batch {B}, {T} tokens: SDPA fp16 {t_fp16:.3f} ms eager, {g_fp16:.3f} graphed", flush=True)
        for name, bits, kgroup, kaxis, vgroup in FORMATS:
            kp = triton_quant.quantize(k, bits, kgroup, kaxis, False, seg)
            vp = triton_quant.quantize(v, bits, vgroup, "token", False, seg)
            n1 = Hkv * T  # the first sequence: enough to check
            want = reference_sdpa(q[:Hkv], triton_quant.dequantize(kp, seg)[:n1], triton_quant.dequantize(vp, seg)[:n1],
                                  1, Hkv, G, T, D)
            plan = triton_decode.DecodePlan(kp, vp, seg)
            tri = triton_decode.DecodePlan(kp, vp, seg, gluon=False)
            err = ((plan(q)[:Hkv].float() - want).norm() / want.norm()).item()
            tri_err = ((tri(q)[:Hkv].float() - want).norm() / want.norm()).item()
            deq = bench(lambda: (triton_quant.dequantize(kp, seg), triton_quant.dequantize(vp, seg)))
            r = dict(batch=B, context=T, format=name, kernel="gluon" if plan.gluon else "triton",
                     sdpa_ms=t_fp16, sdpa_graph_ms=g_fp16, sdpa_variant=how, sdpa_bw=fp16_bytes / (g_fp16 * 1e-3) / bw,
                     bytes=kp.nbytes + vp.nbytes, err=err, triton_err=tri_err,
                     ms=bench(lambda: plan(q)), graph_ms=graph_ms(lambda: plan(q)),
                     triton_ms=bench(lambda: tri(q)), triton_graph_ms=graph_ms(lambda: tri(q)),
                     dequant_sdpa_ms=deq + t_fp16, splits=plan.gluon_splits if plan.gluon else plan.n_main)
            r["speedup"] = g_fp16 / r["graph_ms"]
            r["bw"] = r["bytes"] / (r["graph_ms"] * 1e-3) / bw
            print(f"  {name} ({r['kernel']}): {r['ms']:.3f} eager / {r['graph_ms']:.3f} graphed = "
                  f"{r['speedup']:.2f}x SDPA, {100 * r['bw']:.0f}% BW, err {err:.1e}; Triton kernel "
                  f"{r['triton_graph_ms']:.3f} graphed", flush=True)
            if do_sweep and plan.gluon:
                r["sweep"] = sweep(q, kp, vp, seg, g_fp16)
            rows.append(r)
        del k, v
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="32K only (a smoke run)")
    ap.add_argument("--sweep", action="store_true", help="also sweep the Gluon kernel's tile rows and slices")
    ap.add_argument("--json", help="write all numbers here")
    args = ap.parse_args()
    props = torch.cuda.get_device_properties(0)
    env = dict(device=props.name, sms=props.multi_processor_count, torch=torch.__version__,
               triton=triton.__version__, python=platform.python_version(),
               resident={f"int{b} {r} rows {g} groups": n for (b, r, g), n in gluon_decode.RESIDENT.items()})
    bw = copy_bandwidth()
    print(f"# {env}\ncopy bandwidth (read+write): {bw / 1e12:.2f} TB/s", flush=True)
    rows = decode_rows(bw, args.quick, args.sweep)
    print("\n| batch | context | format | kernel | SDPA fp16 ms, graphed (eager) | kvstack ms, graphed (eager) "
          "| vs SDPA, graphed | % of copy BW | Triton kernel ms, graphed (eager) | dequant+SDPA ms | rel err |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['context']} | {r['format']} | {r['kernel']} | {r['sdpa_graph_ms']:.3f} "
              f"({r['sdpa_ms']:.3f}) | {r['graph_ms']:.3f} ({r['ms']:.3f}) | **{r['speedup']:.2f}x** "
              f"| {100 * r['bw']:.0f}% | {r['triton_graph_ms']:.3f} ({r['triton_ms']:.3f}) "
              f"| {r['dequant_sdpa_ms']:.3f} | {r['err']:.1e} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(env=env, copy_bw=bw, decode=rows), f, indent=1)


if __name__ == "__main__":
    main()
