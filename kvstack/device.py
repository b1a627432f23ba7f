"""Checking a ``--device`` argument before anything loads onto it.

Shared by ``kvstack bench`` (``linkbench/models.py``) and ``kvstack eval`` (``eval/runner.py``); it lives
below both so that neither imports the other.
"""

from __future__ import annotations

import torch

from kvstack.errors import InputError


def check_device(device: str, here: bool = True) -> torch.device:
    """``torch.device(device)`` for cpu / cuda / cuda:N; a clear InputError for anything else or missing CUDA.

    ``here=False`` checks the name only: for work that runs on other machines (``kvstack eval --executor ray``),
    whose workers check their own devices."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"--device {device!r}: give cpu, cuda or cuda:N") from None
    if here and dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: this machine has no CUDA device; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"--device {device!r}: give cpu, cuda or cuda:N")
    return dev
