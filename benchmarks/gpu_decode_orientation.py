"""Compare the two decode slice kernels (plain vs transposed) one configuration per subprocess.

``python benchmarks/gpu_decode_orientation.py`` - each configuration runs in its own process, so
a kernel that faults (illegal address) is reported as such and the others still run; every
run first checks the result against float32 SDPA over the dequantized cache.
"""

from __future__ import annotations

import json
import subprocess
import sys

CHILD = r'''
import json, sys, torch, triton
from kvstack.kernels import triton_decode, triton_quant
from kvstack.kernels.layout import Segments
B, T, bits, kaxis, vgroup, transposed, stages, per_sm = json.loads(sys.argv[1])
Hkv, G, D = 8, 8, 128
S = B * Hkv
seg = Segments.from_lengths([T] * S, 64, device="cuda")
k = torch.randn(S * T, D, device="cuda", dtype=torch.float16)
v = torch.randn(S * T, D, device="cuda", dtype=torch.float16)
q = torch.randn(S, G, D, device="cuda", dtype=torch.float16)
kp = triton_quant.quantize(k, bits, 64 if bits < 8 else 128, kaxis, False, seg)
vp = triton_quant.quantize(v, bits, vgroup, "token", False, seg)
run = lambda: triton_decode.decode_attention(q, kp, vp, seg, block_n=64, num_warps=4, num_stages=stages,
                                             target_programs=per_sm * 132, transposed=transposed)
got = run()
n1 = Hkv * T
kd, vd = triton_quant.dequantize(kp, seg)[:n1].float(), triton_quant.dequantize(vp, seg)[:n1].float()
want = torch.nn.functional.scaled_dot_product_attention(q[:Hkv].view(1, Hkv, G, D).float(),
    kd.view(1, Hkv, T, D), vd.view(1, Hkv, T, D)).view(Hkv, G, D)
err = ((got[:Hkv].float() - want).norm() / want.norm()).item()
ms = triton.testing.do_bench(run, warmup=50, rep=200, return_mode="median")
print(json.dumps(dict(ms=ms, err=err)))
'''


def main() -> None:
    rows = []
    for B, T in [(16, 32768), (16, 131072)]:
        for name, bits, kaxis, vgroup in [("int4 kt64 v64", 4, "token", 64), ("int4 kc64 v128", 4, "channel", 128),
                                          ("int8 kt128 v128", 8, "token", 128)]:
            for transposed, stages in [(True, 1), (True, 2), (False, 2)]:
                if True:
                    cfg = [B, T, bits, kaxis, vgroup, transposed, stages, 2]
                    p = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, text=True)
                    last = (p.stdout.strip().splitlines() or [""])[-1]
                    res = json.loads(last) if p.returncode == 0 and last.startswith("{") else {
                        "error": (p.stderr.strip().splitlines() or ["?"])[-1][:90]}
                    rows.append(dict(batch=B, context=T, format=name, transposed=transposed, stages=stages, **res))
                    print(rows[-1], flush=True)
    print("\n| batch | context | format | kernel | stages | ms | rel err |\n|---|---|---|---|---|---|---|")
    for r in rows:
        what = f"{r['ms']:.3f} | {r['err']:.1e}" if "ms" in r else f"FAILED: {r['error']} |"
        print(f"| {r['batch']} | {r['context']} | {r['format']} | {'transposed' if r['transposed'] else 'plain'} "
              f"| {r['stages']} | {what} |")


if __name__ == "__main__":
    main()
