"""Host-side cost of one compressed layer's decode step on the kernel path: time, ops, launches, reads back.

``python benchmarks/decode_overhead.py [--context 2048] [--steps 24] [--recipe "snapkv:0.25 > int4:token,norot"]``

A decode step through :mod:`kvstack.hf.fast_decode` costs, per layer, the cache update
(append the new token to the dense tail), planning the step, and the attention hook's
call into the decode kernel. On a GPU that Python and its launches run ahead of the
device, so at batch 1 they - not the kernel - set the step time. This script times exactly
that part: ``CompressedLayer.update`` + ``FastStep.attend`` for every layer of a model with
Llama-3.1-8B's attention shape (32 query heads, 8 KV heads, head_dim 128; hidden size and
MLP are tiny, they play no part). It also counts, per layer and step, the PyTorch ops
dispatched, the Triton launches, and the values read back to the host (``.item()`` and
the like, device-to-host copies): each read is a sync that stalls the launch queue.

On a CPU (no GPU) the kernels are replaced by stubs that only count their launches, so
the times are the host cost alone - the Python that a GPU run also pays, without the
launch latency of the driver. On a GPU the real kernels run; the times are still host
times (no synchronization inside a step).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # lets kvstack plan the kernel path on CPU tensors

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

import kvstack  # noqa: E402
from kvstack import kernels  # noqa: E402
from kvstack.kernels import triton_decode  # noqa: E402

READS = ("_local_scalar_dense", "item", "nonzero", "masked_select", "equal", "is_nonzero", "_unique2")


class Launches:
    """Stand-in (CPU) or wrapper (GPU) of a Triton kernel that counts its launches."""

    def __init__(self, kernel, run: bool) -> None:
        self.kernel, self.run, self.count = kernel, run, 0

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.count += 1
            if self.run:
                self.kernel[grid](*args, **kwargs)

        return launch


class Ops(TorchDispatchMode):
    """Counts dispatched ops and reads back to the host."""

    def __init__(self) -> None:
        super().__init__()
        self.ops, self.reads = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        name = func.__name__.split(".")[0]
        inputs = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        to_host = isinstance(out, torch.Tensor) and out.device.type == "cpu" and any(a.is_cuda for a in inputs)
        self.reads += int(name in READS or to_host)
        return out


def model_8b_attention(layers: int, device: str) -> LlamaForCausalLM:
    cfg = LlamaConfig(vocab_size=1024, hidden_size=256, intermediate_size=256, num_hidden_layers=layers,
                      num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=1 << 17,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval().to(device)


def run_steps(model, hf, steps: int, device: str, ops: Ops | None = None) -> list[float]:
    """Seconds of host time per layer-step, for ``steps`` one-token steps over every layer."""
    g = torch.Generator(device=device).manual_seed(0)
    per = []
    for _ in range(steps):
        for i, layer in enumerate(hf.layers):
            k = torch.randn(1, 8, 1, 128, device=device, generator=g)
            v = torch.randn(1, 8, 1, 128, device=device, generator=g)
            q = torch.randn(1, 32, 1, 128, device=device, generator=g)
            attn = model.model.layers[i].self_attn
            t = time.perf_counter()
            if ops is None:
                marker, _ = layer.update(k, v)
                out = marker._kvstack_fast.attend(attn, q, {"scaling": 128**-0.5})
            else:
                with ops:
                    marker, _ = layer.update(k, v)
                    out = marker._kvstack_fast.attend(attn, q, {"scaling": 128**-0.5})
            per.append(time.perf_counter() - t)
            assert out is not None, "this layer did not take the kernel path"
        if device == "cuda":
            torch.cuda.synchronize()
    return per


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--recipe", default="snapkv:0.25 > int4:token,norot")
    args = ap.parse_args()
    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    torch.manual_seed(0)
    model = model_8b_attention(args.layers, device)
    kv = kvstack.compress(model, torch.randint(3, 1000, (args.context,), device=device), args.recipe)
    kernels.ALLOW_CPU = not gpu
    split = triton_decode._split_kernel = Launches(triton_decode._split_kernel, gpu)
    merge = triton_decode._combine_kernel = Launches(triton_decode._combine_kernel, gpu)
    with torch.no_grad():
        hf = kvstack.hf.CompressedCache(kv, model.dtype)
        run_steps(model, hf, 2, device)  # first steps: plans built, kernels compiled
        n = args.steps * args.layers
        split.count = merge.count = 0
        times = run_steps(model, hf, args.steps, device)
        launches = (split.count + merge.count) / n
        ops = Ops()
        run_steps(model, hf, args.steps, device, ops)
    cpu = platform.processor() or platform.machine()
    where = torch.cuda.get_device_name() if gpu else f"CPU ({cpu}), kernels stubbed"
    print(f"# {where}; torch {torch.__version__}; context {args.context}, recipe {args.recipe!r}, "
          f"{args.layers} layers x {args.steps} steps")
    # the lower quartile too: on a shared machine the upper tail is other processes' time slices
    print("| host us per layer-step (median) | lower quartile | torch ops | Triton launches | reads back to host |")
    print("|---|---|---|---|---|")
    q25 = statistics.quantiles(times, n=4)[0]
    print(f"| {statistics.median(times) * 1e6:.0f} | {q25 * 1e6:.0f} | {ops.ops / n:.1f} | {launches:.1f} "
          f"| {ops.reads / n:.1f} |")


if __name__ == "__main__":
    main()
