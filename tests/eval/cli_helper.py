"""Run ``kvstack eval`` / ``kvstack report`` as the CLI does (errors -> exit 2 + message), before
they are wired into kvstack.cli."""

from __future__ import annotations

import argparse
import sys

from kvstack.errors import KvstackError


def run_cli(argv: list[str]) -> int:
    from kvstack.eval.cli import register

    parser = argparse.ArgumentParser(prog="kvstack")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KvstackError as exc:
        print(f"kvstack: error: {exc}", file=sys.stderr)
        return 2
