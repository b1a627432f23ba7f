"""Where transformers releases differ, in one place: each shim names the release it is for.

kvstack supports transformers 5.2 (what the kvpress peer venv pins) up to the newest
release CI tests (``requirements.txt``); ``requirements-oldest.txt`` pins the lower end
and ``make test-oldest`` runs the suite there. Everything else in kvstack calls the
helpers below instead of testing versions itself, so dropping an old release means
deleting its branch here and nothing else.
"""

from __future__ import annotations

from typing import Any

import torch
import transformers
from packaging.version import Version

TRANSFORMERS = Version(transformers.__version__).release  # (major, minor, patch), no pre/dev tags

# 5.24 renamed the cache argument of ``model(...)`` / ``model.generate`` from
# ``past_key_values`` to ``cache`` (the old name warns until its removal, announced for 5.40).
CACHE_ARG = "cache" if TRANSFORMERS >= (5, 24) else "past_key_values"


def cache_kwargs(cache) -> dict[str, Any]:
    """``{name: cache}`` for ``model(**...)`` or ``model.generate(**...)``, named as this transformers expects."""
    return {CACHE_ARG: cache}


def mask_query_length(arg: torch.Tensor | int) -> int:
    """Query tokens of the step, from what ``CacheLayerMixin.get_mask_sizes`` is given:
    the step's ``cache_position`` tensor in 5.2-5.3, the query length (an int) from 5.4."""
    return int(arg.shape[0]) if isinstance(arg, torch.Tensor) else int(arg)


class LayerProtocol:
    """Methods a cache layer must have under every supported release; mix in before
    ``CacheLayerMixin``. Subclasses implement :meth:`max_length` once."""

    def max_length(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    # 5.13 renamed ``get_max_cache_shape`` to ``get_max_length`` (abstract from 5.13;
    # the old name was dropped in 5.20). Both exist so either release finds its own.
    def get_max_length(self) -> int:
        return self.max_length()

    # 5.2-5.12: the abstract method under its old name.
    def get_max_cache_shape(self) -> int:
        return self.max_length()
