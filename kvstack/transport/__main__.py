"""``python -m kvstack.transport serve|push|pull|caches``: the transport commands on their own."""

from __future__ import annotations

import argparse
import sys

from kvstack.errors import KvstackError
from kvstack.transport.cli import register


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kvstack.transport")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KvstackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
