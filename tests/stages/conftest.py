"""Settings for the stage tests: one torch thread (small tensors, contended shared cores)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _stages_one_thread():
    """Small tensor ops (k-means, 1-D DP fits) run ~50x faster on one thread than on two contended ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
