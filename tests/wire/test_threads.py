"""Decoding in several threads of a fresh process at once (what the server does with uploads)
must not race the registration of the built-in encodings (found by benchmarks/wire_soak.py:
right after a restart, concurrent uploads got "this cache uses the row encoding 'quant', which
this kvstack does not know")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kvstack import wire

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import sys, threading
from kvstack import wire
blob = open(sys.argv[1], "rb").read()
barrier, errors = threading.Barrier(16), []
def go():
    barrier.wait()
    try:
        wire.decode(blob)
    except Exception as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=go) for _ in range(16)]
[t.start() for t in threads]
[t.join() for t in threads]
print(len(errors), errors[:1])
"""


def test_first_decodes_in_many_threads_at_once(wire_caches, tmp_path):
    path = tmp_path / "c.kvw"
    wire.save(wire_caches["kivi:2,g8,residual=6"], path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for _ in range(3):  # each run is a fresh process: the registry starts empty
        out = subprocess.run([sys.executable, "-c", SCRIPT, str(path)], capture_output=True, text=True, env=env,
                             timeout=300)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("0 "), out.stdout
