"""One line of feedback around a phase that may take seconds: ``loading smollm2-135m ... 3.1 s``.

Phases with a natural count (prefill tokens, layers) use tqdm bars instead; this is for the rest
(loading a model, a first GGUF conversion), so no command sits silent for more than a moment.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def saying(what: str, enabled: bool = True) -> Iterator[None]:
    """Print ``what ...`` on stderr before the block and its duration after it (nothing if disabled)."""
    start = time.perf_counter()
    if enabled:
        print(f"{what} ...", end="", file=sys.stderr, flush=True)
    try:
        yield
    except BaseException:
        if enabled:  # end the line, so the error message starts on its own
            print(" failed", file=sys.stderr, flush=True)
        raise
    if enabled:
        print(f" {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
