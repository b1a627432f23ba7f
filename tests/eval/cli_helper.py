"""Run ``kvstack eval`` / ``kvstack report`` through kvstack's real entry point (errors -> exit 2 + message)."""

from __future__ import annotations


def run_cli(argv: list[str]) -> int:
    from kvstack.cli import main

    return main(argv)
