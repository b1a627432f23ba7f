"""GPU kernel benchmarks: quantize/dequantize bandwidth and decode attention over packed caches.

Run on a CUDA machine: ``python benchmarks/gpu_kernels.py [--quick] [--json OUT]``.

Everything is timed with CUDA events through ``triton.testing.do_bench`` (median, L2
flushed between runs) after warm-up, on random data. Three reference points, measured in
the same run:

* the device's copy bandwidth (bytes read + written by a large device-to-device copy),
  the ceiling for a memory-bound kernel;
* PyTorch's ``scaled_dot_product_attention`` with the flash backend over the fp16 cache of
  the same tokens (GQA passed natively, and folded into query rows; the faster counts);
* the QuantizedCache strategy (transformers): dequantize the whole cache to fp16, then
  SDPA - timed here with *our* dequantize kernel, so it is a lower bound on that path.
"""

from __future__ import annotations

import argparse
import json
import platform

import torch
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

from kvstack import kernels
from kvstack.kernels import triton_decode, triton_quant
from kvstack.kernels.layout import Segments
from kvstack.rows.quant import QuantRows


def bench(fn) -> float:
    """Median milliseconds of ``fn`` (CUDA events, L2 flushed between runs)."""
    return triton.testing.do_bench(fn, warmup=50, rep=200, return_mode="median")


def copy_bandwidth() -> float:
    """Bytes read + written per second by a 1 GiB device-to-device copy."""
    x = torch.randn(1 << 29, device="cuda", dtype=torch.float16)
    y = torch.empty_like(x)
    ms = bench(lambda: y.copy_(x))
    return 2 * x.numel() * 2 / (ms * 1e-3)


# quantize configurations swept: per token (rows a program, warps); per channel (rows a tile,
# channels a program, groups a program, warps) - the first per-channel one is the default
TOKEN_KNOBS = ("block_n", "num_warps")
CHANNEL_KNOBS = ("block_t", "block_d", "groups_per_program", "num_warps")
TOKEN_CONFIGS = [(16, 4), (32, 4), (64, 4), (64, 8), (128, 8)]
CHANNEL_CONFIGS = [(32, 128, 1, 2), (64, 64, 1, 1), (64, 32, 1, 1), (64, 16, 1, 1), (32, 64, 1, 1), (64, 64, 2, 1),
                   (64, 32, 2, 1), (64, 64, 4, 1), (64, 64, 1, 2), (64, 32, 1, 2), (64, 128, 1, 4), (16, 128, 2, 4)]


QUANT_FORMATS = [(4, 64, "token", False), (2, 64, "token", False), (8, 128, "token", True), (4, 64, "channel", False),
                 (2, 64, "channel", False)]


def quant_table(bw: float, quick: bool, channel_only: bool = False) -> list[dict]:
    rows = (1 << 20) if quick else (1 << 22)
    dim = 128
    x = torch.randn(rows, dim, device="cuda", dtype=torch.float16)
    out = []
    seg = Segments.from_lengths([4096] * (rows // 4096), 64, device="cuda")
    for bits, group, axis, sym in QUANT_FORMATS:
        if channel_only and axis != "channel":
            continue
        s = seg if axis == "channel" else None
        p = triton_quant.quantize(x, bits, group, axis, sym, s)
        moved = x.numel() * 2 + p.nbytes
        qconf = {}
        names = TOKEN_KNOBS if axis == "token" else CHANNEL_KNOBS
        for conf in TOKEN_CONFIGS if axis == "token" else CHANNEL_CONFIGS:
            qconf[conf] = bench(lambda: triton_quant.quantize(x, bits, group, axis, sym, s, **dict(zip(names, conf))))
        qbest = min(qconf, key=qconf.get)
        # bit-exactness of the default and the fastest configuration against the CPU reference
        # (torch on CUDA divides via reciprocals, so it is not the reference)
        n = 1 << 16
        hs = Segments.from_lengths([4096] * 16, 64, "cuda") if s is not None else None
        ref = QuantRows.quantize(x[:n].cpu(), bits, group, axis, sym, segments=[4096] * 16 if s else None)
        exact = True
        for kw in ({}, dict(zip(names, qbest))):
            head = triton_quant.quantize(x[:n], bits, group, axis, sym, hs, **kw)
            exact &= torch.equal(head.codes.cpu(), ref.codes) and torch.equal(head.scales.cpu(), ref.scales)
            exact &= sym or torch.equal(head.zeros.cpu(), ref.zeros)
        tq = qconf[qbest]
        t_default = bench(lambda: triton_quant.quantize(x, bits, group, axis, sym, s))
        dconf = {}
        for block_n, warps in [(32, 4), (64, 4), (128, 4), (128, 8)]:
            dconf[(block_n, warps)] = bench(lambda: triton_quant.dequantize(
                p, s, torch.float16, block_n=block_n, num_warps=warps))
        dbest = min(dconf, key=dconf.get)
        td = dconf[dbest]
        lengths = None if s is None else seg.lengths.tolist()
        tr = bench(lambda: QuantRows.quantize(x, bits, group, axis, sym, segments=lengths))
        out.append(dict(
            fmt=f"int{bits} {axis} g{group} {'sym' if sym else 'asym'}", rows=rows, exact=exact,
            quant_ms=tq, quant_bw=moved / (tq * 1e-3) / bw, quant_default_bw=moved / (t_default * 1e-3) / bw,
            dequant_ms=td, dequant_bw=moved / (td * 1e-3) / bw,
            torch_quant_ms=tr, quant_config=qbest, dequant_config=dbest,
        ))
    return out


def _sdpa_fp16(k, v, q, B, Hkv, G, T, D):
    """Fastest flash SDPA over the fp16 cache: native GQA, or GQA folded into query rows."""
    k4, v4 = k.view(B, Hkv, T, D), v.view(B, Hkv, T, D)
    qn = q.view(B, Hkv * G, 1, D)
    qf = q.view(B, Hkv, G, D)
    options = {}
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        try:
            options["native"] = lambda: torch.nn.functional.scaled_dot_product_attention(qn, k4, v4, enable_gqa=True)
            options["native"]()
        except RuntimeError:
            options.pop("native")
        options["folded"] = lambda: torch.nn.functional.scaled_dot_product_attention(qf, k4, v4)
        times = {name: bench(fn) for name, fn in options.items()}
    best = min(times, key=times.get)
    return times[best], best, options[best]


# (name, bits, key axis, value group): keys per channel in groups of 64 tokens (KIVI's layout, "kc")
# or per token in groups of 64 channels ("kt"); values per token, groups of 64 or 128 channels.
FORMATS = [("int4 kt128 v128", 4, "token", 128), ("int4 kc64 v64", 4, "channel", 64),
           ("int4 kc64 v128", 4, "channel", 128), ("int4 kt64 v64", 4, "token", 64),
           ("int2 kc64 v64", 2, "channel", 64), ("int8 kt128 v128", 8, "token", 128)]


# (rows a tile, warps, pipeline stages, programs per SM)
DECODE_CONFIGS = [(64, 4, 2, 4), (64, 4, 3, 4), (64, 4, 3, 8), (64, 8, 3, 4), (64, 4, 3, 2), (32, 4, 3, 4),
                  (128, 4, 3, 4), (128, 8, 3, 2)]


def decode_case(B: int, T: int, Hkv: int, G: int, D: int) -> tuple:
    """Random fp16 keys, values and queries of ``B`` sequences x ``Hkv`` KV heads of ``T`` rows: (S, seg, k, v, q)."""
    S = B * Hkv
    seg = Segments.from_lengths([T] * S, 64, device="cuda")
    k = torch.randn(S * T, D, device="cuda", dtype=torch.float16)
    v = torch.randn(S * T, D, device="cuda", dtype=torch.float16)
    q = torch.randn(S, G, D, device="cuda", dtype=torch.float16)
    return S, seg, k, v, q


def decode_table(bw: float, quick: bool, defaults_only: bool = False) -> list[dict]:
    Hkv, G, D = 8, 8, 128
    cases = [(1, 32768), (16, 32768), (1, 131072), (16, 131072)]
    if quick:
        cases = [(1, 32768), (16, 32768)]
    out = []
    for B, T in cases:
        S, seg, k, v, q = decode_case(B, T, Hkv, G, D)
        # a decode cache's dense tail of 64 generated tokens per KV head, read in place
        tk, tv = (torch.randn(S, 64, D, device="cuda", dtype=torch.float16) for _ in range(2))
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            t_fp16, how, _ = _sdpa_fp16(k, v, q, B, Hkv, G, T, D)
        fp16_bytes = 2 * k.numel() * 2
        row = dict(batch=B, context=T, sdpa_fp16_ms=t_fp16, sdpa_variant=how, sdpa_bw=fp16_bytes / (t_fp16 * 1e-3) / bw)
        for name, bits, kaxis, vgroup in FORMATS:
            kp = triton_quant.quantize(k, bits, 128 if vgroup == 128 and kaxis == "token" else 64, kaxis, False, seg)
            vp = triton_quant.quantize(v, bits, vgroup, "token", False, seg)
            kd = triton_quant.dequantize(kp, seg)
            vd = triton_quant.dequantize(vp, seg)
            got = kernels.decode_attention(q, kp, vp, seg)
            n1 = Hkv * T  # the first sequence: enough to check, without float32 copies of 16 sequences
            want = reference_sdpa(q[:Hkv], kd[:n1], vd[:n1], 1, Hkv, G, T, D)
            err = ((got[:Hkv].float() - want).norm() / want.norm()).item()
            tuned = {}
            sms = torch.cuda.get_device_properties(0).multi_processor_count
            for conf in ["default"] if defaults_only else DECODE_CONFIGS:
                kw = {} if conf == "default" else dict(block_n=conf[0], num_warps=conf[1], num_stages=conf[2],
                                                      target_programs=conf[3] * sms)
                try:
                    tuned[conf] = bench(lambda: triton_decode.decode_attention(q, kp, vp, seg, gluon=False, **kw))
                except triton.runtime.errors.OutOfResources:
                    pass
            fused = bench(lambda: triton_decode.decode_attention(q, kp, vp, seg, tk, tv, gluon=False))
            apart = bench(lambda: triton_decode.decode_attention(q, kp, vp, seg, tk, tv, fuse_tail=False, gluon=False))
            best = min(tuned, key=tuned.get)
            t = tuned[best]
            bkw = {} if best == "default" else dict(block_n=best[0], num_warps=best[1], num_stages=best[2],
                                                    target_programs=best[3] * sms)
            portable = bench(lambda: triton_decode.decode_attention(q, kp, vp, seg, swar=False, gluon=False, **bkw))
            moved = kp.nbytes + vp.nbytes
            deq = bench(lambda: (triton_quant.dequantize(kp, seg), triton_quant.dequantize(vp, seg)))
            row[name] = dict(ms=t, speedup=t_fp16 / t, bw=moved / (t * 1e-3) / bw, err=err, config=best,
                             tail_fused_ms=fused, tail_apart_ms=apart, portable_ms=portable,
                             bytes=moved, dequant_then_sdpa_ms=deq + t_fp16, vs_dequant=(deq + t_fp16) / t)
        out.append(row)
        del k, v
        torch.cuda.empty_cache()
    return out


def reference_sdpa(q, kd, vd, B, Hkv, G, T, D):
    """SDPA (math backend, float32) over the dequantized cache: what the kernel must equal."""
    k4, v4 = kd.view(B, Hkv, T, D).float(), vd.view(B, Hkv, T, D).float()
    return torch.nn.functional.scaled_dot_product_attention(q.view(B, Hkv, G, D).float(), k4, v4).view(B * Hkv, G, D)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    ap.add_argument("--json", help="write all numbers here")
    ap.add_argument("--decode-only", action="store_true", help="skip the quantize/dequantize table")
    ap.add_argument("--quant-only", action="store_true", help="skip the decode attention table")
    ap.add_argument("--channel-only", action="store_true", help="quantize table: per-channel formats only")
    ap.add_argument("--decode-defaults", action="store_true", help="time decode attention in its default configuration "
                    "only (no sweep)")
    args = ap.parse_args()
    props = torch.cuda.get_device_properties(0)
    env = dict(device=props.name, sms=props.multi_processor_count, torch=torch.__version__,
               triton=triton.__version__, python=platform.python_version())
    bw = copy_bandwidth()
    print(f"# {env}\ncopy bandwidth (read+write): {bw / 1e12:.2f} TB/s")
    qt = [] if args.decode_only else quant_table(bw, args.quick, args.channel_only)
    print("\n| format | rows x 128 | bit-exact vs CPU ref | quantize ms | % of copy BW | same, default config "
          "| dequantize ms | % of copy BW | torch reference quantize ms | configs (quant; dequant) |\n"
          "|---|---|---|---|---|---|---|---|---|---|")
    for r in qt:
        print(f"| {r['fmt']} | {r['rows']} | {r['exact']} | {r['quant_ms']:.3f} | {100 * r['quant_bw']:.0f}% "
              f"| {100 * r['quant_default_bw']:.0f}% "
              f"| {r['dequant_ms']:.3f} | {100 * r['dequant_bw']:.0f}% | {r['torch_quant_ms']:.2f} "
              f"| {r['quant_config']}; {r['dequant_config']} |")
    dt = [] if args.quant_only else decode_table(bw, args.quick, args.decode_defaults)
    print("\n| batch | context | SDPA flash fp16 ms (% BW) | format | kvstack ms | speedup vs fp16 | % of copy BW "
          "| dequant+SDPA ms | speedup vs dequant+SDPA | rel err | block,warps,stages,programs/SM "
          "| + 64-token tail, one launch ms | + tail, own launch ms | portable unpacking ms (speedup) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in dt:
        for name, *_ in FORMATS:
            c = r[name]
            print(f"| {r['batch']} | {r['context']} | {r['sdpa_fp16_ms']:.3f} ({100 * r['sdpa_bw']:.0f}%, "
                  f"{r['sdpa_variant']}) | {name} | {c['ms']:.3f} | {c['speedup']:.2f}x | {100 * c['bw']:.0f}% "
                  f"| {c['dequant_then_sdpa_ms']:.3f} | {c['vs_dequant']:.1f}x | {c['err']:.1e} | {c['config']} "
                  f"| {c['tail_fused_ms']:.3f} | {c['tail_apart_ms']:.3f} "
                  f"| {c['portable_ms']:.3f} ({r['sdpa_fp16_ms'] / c['portable_ms']:.2f}x) |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(env=env, copy_bw=bw, quant=[{k: str(v) for k, v in r.items()} for r in qt], decode=[
                {k: (v if not isinstance(v, dict) else {a: (list(b) if isinstance(b, tuple) else b)
                                                         for a, b in v.items()}) for k, v in r.items()} for r in dt
            ]), f, indent=1)


if __name__ == "__main__":
    main()
