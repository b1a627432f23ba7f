"""Time to first token over a shaped link: now the ``kvstack bench ttft`` command; this script runs
it with the settings recorded in RESULTS.md ("Wire format" section).

    python benchmarks/wire_ttft.py                       # 4k tokens, 0.1 / 1 / 10 Gbit/s, deadline 1000 ms
    python benchmarks/wire_ttft.py --tokens 2k --repeat 1  # any `kvstack bench ttft` option
"""

from __future__ import annotations

import sys

from kvstack.cli import main

DEFAULTS = ["--model", "kvstack-retrieval", "--tokens", "4k", "--bandwidth", "0.1", "1", "10", "--deadline", "1000",
            "--samples", "4", "--repeat", "3", "--recipes", "int8", "int4", "snapkv:0.25 > int4", "streaming > int4"]

if __name__ == "__main__":
    sys.exit(main(["bench", "ttft", *DEFAULTS, *sys.argv[1:]]))
