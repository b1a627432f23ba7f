"""Time to first token on the GPU for a random-weight model of Llama-3.1-8B's shape (issue 7): runs
``kvstack bench ttft`` with the settings below, sized to finish in one call of under 6 minutes.

    python benchmarks/gpu_ttft.py                  # 8K and 32K, 0.1 / 1 / 10 Gbit/s, writes $OUT/gpu_ttft.{md,json}
    python benchmarks/gpu_ttft.py --tokens 8k      # any `kvstack bench ttft` option overrides

The model is built on the GPU in bf16 from the ``llama-3.1-8b`` preset (no weights are read), the
context and question are random ids, so accuracy is '-'. At 32K the fp16 cache is 4 GiB - 344 s at
0.1 Gbit/s - so only cells whose link time is at most ``--max-transfer-s`` and that fit the
``--budget-s`` are shaped for real (cheapest first); the rest are derived from the measured
components, and every row says which. The loopback server's store goes to /dev/shm when it has
room (writing 6 GB of payloads to a disk is not what is measured).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = ["--model", "random:llama-3.1-8b", "--device", "cuda", "--tokens", "8k", "32k",
            "--recipes", "int4:token,norot", "snapkv:0.25 > int4:token,norot", "int2", "--bandwidth", "0.1", "1", "10",
            "--repeat", "1", "--chunk-size", "4096", "--max-transfer-s", "40", "--budget-s", "290", "--threads", "4",
            "--quiet"]  # no progress bars: a line per measurement goes to stderr instead


def store_args(need_gib: int = 16) -> list[str]:
    """``--store /dev/shm`` when that tmpfs has ``need_gib`` free, else nothing (a temp dir)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free >= need_gib << 30:
        return ["--store", str(shm)]
    return []


def out_args() -> list[str]:
    out = os.environ.get("OUT")
    if not out:
        return []
    Path(out).mkdir(parents=True, exist_ok=True)
    return ["--out", str(Path(out) / "gpu_ttft.md"), "--json", str(Path(out) / "gpu_ttft.json")]


if __name__ == "__main__":
    # runnable from the repo root without installing kvstack; the loopback servers inherit the path
    sys.path.insert(0, str(ROOT))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    from kvstack.cli import main

    sys.exit(main(["bench", "ttft", *DEFAULTS, *store_args(), *out_args(), *sys.argv[1:]]))
