"""Load test of the cache server: N concurrent clients push and pull M caches, against a real
server process with the directory store and with a Redis store; prints a markdown table.

    python benchmarks/wire_load.py                      # 64 clients, 200 caches, dir + redis
    python benchmarks/wire_load.py --clients 8 --caches 40 --stores dir

Redis: a private redis-server on a free loopback port is started (Debian's redis-server must
be installed) unless --redis-url points at one. Everything runs on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from kvstack.transport.loadtest import HEADER, run_load, synthetic_caches

TOKEN = "load-test-token-0123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(workdir: str) -> tuple[subprocess.Popen, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed: apt-get install -y redis-server (or pass --redis-url)")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", workdir, "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, f"redis://127.0.0.1:{port}/0"


def start_server(store: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvstack.transport", "serve", "--store", store, "--port", "0", "--token", TOKEN],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        sys.exit(f"server did not start: {line!r}")
    return proc, line.split("listening on ")[1].split()[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--caches", type=int, default=200)
    ap.add_argument("--tokens", type=int, default=512, help="context tokens per synthetic cache")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--stores", default="dir,redis")
    ap.add_argument("--redis-url")
    ap.add_argument("--codes", default="zstd", help="wire codec of the codes (raw, zstd, ans, range)")
    args = ap.parse_args()

    caches = synthetic_caches(args.caches, tokens=args.tokens, layers=args.layers)
    print(f"{args.caches} caches of {args.tokens} tokens x {args.layers} layers (int4), {args.clients} clients, "
          f"codes={args.codes}\n")
    print(HEADER)
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.stores.split(","):
            redis_proc = None
            if kind == "redis":
                if args.redis_url:
                    store = args.redis_url
                else:
                    redis_proc, store = start_redis(tmp)
            else:
                store = os.path.join(tmp, "store")
            server, url = start_server(store)
            try:
                report = asyncio.run(run_load(url, TOKEN, caches, args.clients, codes=args.codes))
            finally:
                server.terminate()
                server.wait(10)
                if redis_proc is not None:
                    redis_proc.terminate()
                    redis_proc.wait(10)
            print(report.row(kind), flush=True)
            failures += len(report.lost) + len(report.corrupted) + len(report.errors)
            for line in report.errors[:5]:
                print("  error:", line)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
