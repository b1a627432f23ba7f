"""Shared fixtures of the wire tests: one tiny Llama and its caches under many recipes, built once."""

from __future__ import annotations

import pytest
import torch
from wire_helpers import RECIPES, tiny_llama  # noqa: F401  (re-exported for the tests)

import kvstack


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models run faster on one thread than on two contended ones (shared CI cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def wire_model():
    return tiny_llama()


@pytest.fixture(scope="session")
def wire_caches(wire_model):
    """``recipe -> KVCache`` of one 48-token context, for every recipe in ``RECIPES``."""
    ctx = torch.randint(3, 128, (48,), generator=torch.Generator().manual_seed(5))
    return {r: kvstack.compress(wire_model, ctx, r) for r in RECIPES}
