"""The capture-provider registry: which code supplies each capture a stage may need.

A stage names what it needs (``needs``, names from :mod:`kvstack.grammar.needs`); the prefill
driver asks :func:`providers_for` who supplies those names and runs them, so the driver names no
stage and a new method that captures something new adds one provider, not a branch in the driver.
A provider works either *during* the prefill (it sees every chunk's logits) or *after* it (it gets
the model, its facts and the dense cache, and may run its own passes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from kvstack.errors import ConfigError
from kvstack.hf.model import ModelInfo
from kvstack.kv import KVCache


@dataclass(frozen=True)
class CaptureInputs:
    """What an *after* provider may read: the model, its facts, the dense cache of the context, and every need."""

    model: Any
    info: ModelInfo
    cache: KVCache
    needs: frozenset[str]


class ChunkObserver(Protocol):
    """A *during* provider's state for one prefill: fed each chunk's logits, then asked for its captures."""

    def update(self, logits: torch.Tensor, ids: torch.Tensor, start: int) -> None: ...

    def result(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class CaptureProvider:
    """Supplies the capture ``need`` (and may add companions, e.g. the seconds it took).

    ``during(context_length)`` returns a :class:`ChunkObserver` (the prefill then keeps every
    position's logits, not just the last); ``after(inputs)`` returns the captures once the dense
    cache exists. Exactly one of the two is given.
    """

    need: str
    during: Callable[[int], ChunkObserver] | None = None
    after: Callable[[CaptureInputs], dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if (self.during is None) == (self.after is None):
            raise ConfigError(f"capture provider {self.need!r}: give exactly one of during= and after=")


_PROVIDERS: dict[str, CaptureProvider] = {}


def register_provider(provider: CaptureProvider) -> CaptureProvider:
    """Make ``provider`` the supplier of ``provider.need``; a name is supplied by one provider only."""
    if provider.need in _PROVIDERS:
        raise ConfigError(f"capture {provider.need!r} already has a provider; unregister_provider it first")
    _PROVIDERS[provider.need] = provider
    return provider


def unregister_provider(need: str) -> CaptureProvider | None:
    """Remove and return the provider of ``need`` (None if there was none): a plugin's or a test's undo."""
    return _PROVIDERS.pop(need, None)


def providers_for(needs: Iterable[str]) -> list[CaptureProvider]:
    """The registered providers of ``needs``, in registration order (names without one are the
    attention hook's, or are left out: the stage that needs them says so when it runs). A
    parameterized need ``name:key=value`` (e.g. ``local_nll:window=128``) goes to ``name``'s provider,
    which reads its parameters from :attr:`CaptureInputs.needs`."""
    wanted = {n.split(":", 1)[0] for n in needs}
    return [p for name, p in _PROVIDERS.items() if name in wanted]


def provided() -> frozenset[str]:
    """Every capture name a provider is registered for."""
    return frozenset(_PROVIDERS)
