"""Decode policies: what a stage keeps doing to a layer while new tokens are generated.

Most stages act once, on the prompt's cache. A few go on acting during decoding: streaming keeps a
fixed budget (its sinks and newest rows) as tokens arrive, KIVI quantizes generated tokens in blocks.
Such a stage records its rule in the compressed layer's ``meta`` under its own key (so the rule is
saved and sent with the cache, :mod:`kvstack.wire`) and registers, for that key, a factory that turns
the recorded value back into a :class:`DecodePolicy`. The HF cache (:mod:`kvstack.hf.cache`) asks
:func:`decode_policies` for a layer's policies and calls them after every step; it reads no
stage's meta keys itself, so a new decoding behaviour touches only its stage's module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch

from kvstack.errors import ConfigError
from kvstack.kv import KVLayer


class DecodeRows(Protocol):
    """What the cache layer offers a policy: its compressed segments (``segments[0]`` is the
    context), the dense tail of generated tokens, and the two edits a policy may make."""

    segments: list[KVLayer]
    window: int | None

    @property
    def base(self) -> KVLayer: ...

    @property
    def tail_pos(self) -> torch.Tensor: ...

    @property
    def tail_length(self) -> int: ...

    def drop_rows(self, keeps: list[torch.Tensor], tail_keep: torch.Tensor) -> None:
        """Keep, per segment, the rows flagged in ``keeps`` and the tail tokens flagged in ``tail_keep``."""

    def take_tail(self, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Remove the ``count`` oldest tail tokens and return their ``[H, n, D]`` keys, values and positions."""


class DecodePolicy:
    """One stage's decoding behaviour. After each step the cache first calls every policy's
    :meth:`evict` (dropping rows, after the sliding window's own trim), then every :meth:`compress`
    (re-encoding tail tokens), so a budget is kept before what survives it is quantized."""

    def evict(self, layer: DecodeRows) -> None:
        """Drop rows the stage no longer keeps (default: none)."""

    def compress(self, layer: DecodeRows) -> None:
        """Move tail tokens into compressed segments (default: none)."""


PolicyFactory = Callable[[Any], DecodePolicy]
_FACTORIES: dict[str, PolicyFactory] = {}


def register_decode_policy(meta_key: str, factory: PolicyFactory) -> None:
    """Build a policy with ``factory(meta[meta_key])`` for every layer whose meta holds ``meta_key``."""
    if _FACTORIES.get(meta_key, factory) is not factory:
        raise ConfigError(f"decode policy key {meta_key!r} registered twice")
    _FACTORIES[meta_key] = factory


def unregister_decode_policy(meta_key: str) -> PolicyFactory | None:
    """Remove and return the factory for ``meta_key`` (None if there was none): a plugin's or a test's undo."""
    return _FACTORIES.pop(meta_key, None)


def decode_policies(meta: Mapping[str, Any]) -> list[DecodePolicy]:
    """The policies recorded in a layer's ``meta``, in registration order (empty: the layer only grows).
    Only stage modules already imported have registered theirs: a caller that may see a cache loaded
    from disk imports them first (``kvstack.stages.load_builtin``)."""
    return [factory(meta[key]) for key, factory in _FACTORIES.items() if meta.get(key) is not None]
