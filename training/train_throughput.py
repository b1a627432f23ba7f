"""Training speed of the kvstack-retrieval model per sequence length.

    python -m training.train_throughput --summary path/to/train_summary.json   # a run's own timings
    python -m training.train_throughput --measure [--device cuda]              # time steps here

``--measure`` times full optimizer steps (forward, backward, AdamW) of the shipped shape on random
tokens, 65,536 tokens per step, bf16 autocast on CUDA; the summary mode prints what the training
script measured before fitting its curriculum, and the tokens/s it logged while training.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def table(rows: list[tuple[str, ...]], head: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def from_summary(path: Path) -> str:
    s = json.loads(path.read_text())
    logged: dict[int, list[float]] = {}
    for rec in s["log"][1:]:  # the first record includes start-up
        logged.setdefault(rec["length"], []).append(rec["tokens_per_s"])
    rows = []
    for length, steps in s["phases"]:
        bench = s["bench_step_seconds"].get(str(length))
        speeds = sorted(logged.get(length, []))
        median = speeds[len(speeds) // 2] if speeds else float("nan")
        rows.append((str(length), str(steps), f"{bench * 1e3:.1f}" if bench else "-",
                     f"{s['tokens_per_step'] / bench / 1e3:.0f}" if bench else "-", f"{median / 1e3:.0f}"))
    head = ("length", "steps", "bench ms/step", "bench k tok/s", "training k tok/s (median)")
    return f"{s['device_name']}, torch {s['torch']}, {s['parameters']:,} parameters\n\n" + table(rows, head)


def measure(device: str, lengths: list[int]) -> str:
    import torch

    from training.model import LlamaShape, TrainLlama
    from training.train import measure_step_seconds

    model = TrainLlama(LlamaShape()).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=0.0, fused=device.startswith("cuda"))
    secs = measure_step_seconds(model, opt, lengths, 65536, device)
    rows = [(str(k), f"{v * 1e3:.1f}", f"{65536 / v / 1e3:.0f}") for k, v in secs.items()]
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    return f"{name}, torch {torch.__version__}\n\n" + table(rows, ("length", "ms/step", "k tok/s"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--summary", type=Path)
    ap.add_argument("--measure", action="store_true")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--lengths", default="256,1024,4096,8192")
    args = ap.parse_args()
    if args.summary:
        print(from_summary(args.summary))
    if args.measure:
        print(measure(args.device, [int(x) for x in args.lengths.split(",")]))
    if not (args.summary or args.measure):
        ap.error("pass --summary FILE or --measure")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
