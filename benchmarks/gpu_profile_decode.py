"""Profile helper: run the decode kernel once per format (B=16, 32K) so ncu can read its counters.

``ncu --section SpeedOfLight --section WarpStateStats -k regex:_split_kernel python benchmarks/gpu_profile_decode.py``
"""

from __future__ import annotations

import sys

import torch

from kvstack.kernels import triton_decode, triton_quant
from kvstack.kernels.layout import Segments


def main() -> None:
    B, Hkv, G, D, T = 16, 8, 8, 128, 32768
    S = B * Hkv
    seg = Segments.from_lengths([T] * S, 64, device="cuda")
    k = torch.randn(S * T, D, device="cuda", dtype=torch.float16)
    v = torch.randn(S * T, D, device="cuda", dtype=torch.float16)
    q = torch.randn(S, G, D, device="cuda", dtype=torch.float16)
    formats = {"kc64v128": (4, "channel", 128), "kt64v64": (4, "token", 64), "int8": (8, "token", 128)}
    for name in sys.argv[1:] or formats:
        bits, kaxis, vg = formats[name]
        kp = triton_quant.quantize(k, bits, 64 if bits < 8 else 128, kaxis, False, seg)
        vp = triton_quant.quantize(v, bits, vg, "token", False, seg)
        for _ in range(2):
            triton_decode.decode_attention(q, kp, vp, seg, block_n=64, num_warps=4, num_stages=3,
                                           target_programs=2 * 132)
        torch.cuda.synchronize()
        print(name, "done")


if __name__ == "__main__":
    main()
