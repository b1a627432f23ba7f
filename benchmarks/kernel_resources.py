"""Registers, spills, shared memory and load pipelining of the decode kernel, compiled offline for a GPU.

No GPU needed: Triton compiles for a named target (``--arch 90`` = H100) down to a cubin, and the
``cuobjdump`` shipped inside Triton reads its resource usage. Use it before spending device time: the
previous profile (RESULTS.md) traced the INT4 decode kernel's speed to occupancy, which this shows as
registers per thread (255 = the cap, i.e. one or two programs per SM), and to unpipelined loads
(``pipelined loads`` = 0: no cp.async / TMA copies in the loop).

    python benchmarks/kernel_resources.py                 # the default decode configurations
    python benchmarks/kernel_resources.py --warps 8 --block 128
    python benchmarks/kernel_resources.py --gluon         # the Gluon kernel (kt128 v128, kt64 v64) by tile size

For the Gluon kernel, "loop SASS" spans both branches of the tile loop (the masked scale loads of a
ragged tile's edge are a branch the interior tiles skip), so it overstates one interior tile a little.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from kvstack.kernels import gluon_decode
from kvstack.kernels.triton_decode import _split_kernel

POINTERS = {"Q": "*fp16", "K": "*u8", "KS": "*fp16", "KZ": "*fp16", "V": "*u8", "VS": "*fp16", "VZ": "*fp16",
            "STARTS": "*i32", "LENS": "*i32", "GSTARTS": "*i32", "TK": "*fp16", "TV": "*fp16", "TSTARTS": "*i32",
            "TLENS": "*i32", "WORK": "*fp32"}
CONSTANTS = ("M", "M_PAD", "QM", "D", "BLOCK_N", "K_BITS", "K_GROUP", "K_CHANNEL", "K_SYM", "V_BITS", "V_GROUP",
             "V_CHANNEL", "V_SYM", "HAS_TAIL", "TAIL_TABLE", "IEEE", "SWAR")
# (name, bits, key group, keys per channel, value group), as in benchmarks/gpu_kernels.py
FORMATS = [("int4 kt64 v64", 4, 64, False, 64), ("int4 kt128 v128", 4, 128, False, 128),
           ("int4 kc64 v64", 4, 64, True, 64), ("int8 kt128 v128", 8, 128, False, 128),
           ("int2 kc64 v64", 2, 64, True, 64)]


def _cuobjdump(cubin: bytes, flag: str) -> str:
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([tool, flag, f.name], capture_output=True, text=True, check=True).stdout


def loop_instructions(sass: str) -> int:
    """SASS instructions per thread in the largest backward-branch region: one pass of the tile loop."""
    insts = [(int(m.group(1), 16), m.group(2)) for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    spans = [(int(m.group(1), 16), a) for a, text in insts if (m := re.search(r"BRA 0x([0-9a-f]+)", text))
             and int(m.group(1), 16) < a]
    if not spans:
        return 0
    lo, hi = max(spans, key=lambda span: span[1] - span[0])
    return sum(lo <= a <= hi for a, _ in insts)


def resources(fn, signature: dict, constants: dict, arch: int, warps: int, stages: int, source=ASTSource) -> dict:
    """Compile ``fn`` for ``sm_<arch>`` and read registers/stack from the cubin, pipelining from the TTGIR.

    Pointers are marked 16-byte aligned, as Triton specializes them at launch for torch's
    allocations: without that the loads compile unvectorized and unpipelined, which is not
    what runs (this tool's first version missed it and reported 255 registers, no pipelining).
    """
    aligned = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names)
               if signature.get(name, "").startswith("*")}
    kernel = triton.compile(source(fn=fn, signature=signature, constexprs=constants, attrs=aligned),
                            target=GPUTarget("cuda", arch, 32), options={"num_warps": warps, "num_stages": stages})
    usage = _cuobjdump(kernel.asm["cubin"], "-res-usage")
    ttgir = kernel.asm["ttgir"]
    number = lambda key: int(m.group(1)) if (m := re.search(key + r":(\d+)", usage)) else -1  # noqa: E731
    return {"registers": number("REG"), "spill_stack": number("STACK"), "shared_bytes": kernel.metadata.shared,
            "pipelined_loads": len(re.findall(r"async_copy_global_to_local|async_tma_copy_global_to_local", ttgir)),
            "layout_converts": len(re.findall(r"ttg\.convert_layout", ttgir)),
            "mma": sorted(set(re.findall(r"versionMajor = (\d)", ttgir))),
            "loop_instructions": loop_instructions(_cuobjdump(kernel.asm["cubin"], "-sass"))}


def gluon_table(arch: int, rows: int) -> None:
    """The Gluon kernel (``gluon_decode.py``), INT4 and INT8, one or two scale groups a row, tiles, prefetch."""
    from triton.experimental.gluon._runtime import GluonASTSource

    fn = gluon_decode._packed_split_kernel
    pointers = dict(POINTERS, K="*i32", V="*i32")
    signature = {n: pointers.get(n, "fp32" if n == "qk_scale" else "i32") for n in fn.arg_names}
    print(f"\nGluon decode kernel for sm_{arch}: one warp, {rows} query rows, head_dim 128, "
          f"Triton {triton.__version__}")
    print("| format | tile rows | prefetch | registers/thread | spill stack B | shared B | loop SASS instructions |")
    print("|---|---|---|---|---|---|---|")
    for bits in (4, 8):
        for groups, block, prefetch in ((1, 32, False), (1, 64, False), (1, 128, False), (1, 32, True), (2, 32, False),
                                        (2, 64, False)):
            constants = dict(M=rows, D=128, BITS=bits, BLOCK=block, QN=8 if rows <= 8 else 16, K_SYM=False,
                             V_SYM=False, PREFETCH=prefetch, KG=groups, VG=groups,
                             **gluon_decode.layouts(bits, 128, block))
            sig = {n: ("constexpr" if n in constants else t) for n, t in signature.items()}
            r = resources(fn, sig, constants, arch, 1, 1, GluonASTSource)
            g = 128 // groups
            print(f"| int{bits} kt{g} v{g} | {block} | {prefetch} | {r['registers']} | {r['spill_stack']} "
                  f"| {r['shared_bytes']} | {r['loop_instructions']} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", type=int, default=90, help="compute capability x10 (90 = H100, 80 = A100)")
    ap.add_argument("--block", type=int, default=64, help="rows per tile (BLOCK_N)")
    ap.add_argument("--warps", type=int, default=4)
    ap.add_argument("--stages", type=int, default=3)
    ap.add_argument("--group-size", type=int, default=8, help="query heads per KV head (rows of the product)")
    ap.add_argument("--gluon", action="store_true", help="the Gluon kernel instead (gluon_decode.py)")
    ap.add_argument("--tail", action="store_true", help="compile with the fused dense tail (a decode step's launch; "
                    "its second loop holds more registers, and the loop count then spans both loops)")
    args = ap.parse_args()
    if args.gluon:
        gluon_table(args.arch, args.group_size)
        return
    signature = {n: POINTERS.get(n, "constexpr" if n in CONSTANTS else ("fp32" if n == "qk_scale" else "i32"))
                 for n in _split_kernel.arg_names}
    print(f"decode kernel for sm_{args.arch}: {args.block}-row tiles, {args.warps} warps, {args.stages} stages, "
          f"{args.group_size} query rows, {'with' if args.tail else 'no'} dense tail, Triton {triton.__version__}")
    print("| format | unpacking | registers/thread | spill stack B | shared B | pipelined loads | layout converts "
          "| mma | loop SASS instructions/thread |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, bits, kgroup, kchannel, vgroup in FORMATS:
        for swar in (False, True):
            constants = dict(M=args.group_size, M_PAD=max(16, triton.next_power_of_2(args.group_size)), QM=1, D=128,
                             BLOCK_N=args.block, K_BITS=bits, K_GROUP=kgroup, K_CHANNEL=kchannel, K_SYM=False,
                             V_BITS=bits, V_GROUP=vgroup, V_CHANNEL=False, V_SYM=False, HAS_TAIL=args.tail,
                             TAIL_TABLE=False, IEEE=False, SWAR=swar)
            r = resources(_split_kernel, signature, constants, args.arch, args.warps, args.stages)
            print(f"| {name} | {'SWAR' if swar else 'portable'} | {r['registers']} | {r['spill_stack']} "
                  f"| {r['shared_bytes']} | {r['pipelined_loads']} | {r['layout_converts']} | v{','.join(r['mma'])} "
                  f"| {r['loop_instructions']} |")

if __name__ == "__main__":
    main()
