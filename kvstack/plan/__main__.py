"""``python -m kvstack.plan MODEL ...``: the plan subcommand without the rest of the CLI."""

from __future__ import annotations

import argparse
import sys

from kvstack.plan.cli import register


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "plan":
        argv.insert(0, "plan")
    parser = argparse.ArgumentParser(prog="kvstack")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
