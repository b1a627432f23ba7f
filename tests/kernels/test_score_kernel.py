"""Attention received per key (selection scores) from the kernel equals the PyTorch reference."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from kvstack.stages.select.scores import attention_received


def _rows(hk, length, d, window, device, g):
    keys = torch.randn(hk, length, d, generator=g).to(device)
    pos = torch.arange(length).repeat(hk, 1)
    pos[1] = torch.sort(torch.randperm(3 * length, generator=g)[:length]).values  # evicted, scattered positions
    valid = torch.ones(hk, length, dtype=torch.bool)
    valid[0, length - 7 :] = False  # a shorter head, padded
    return SimpleNamespace(keys=keys, pos=pos.to(device), valid=valid.to(device), window=window, num_heads=hk)


@pytest.mark.parametrize("window", [None, 50])
def test_kernel_equals_reference(device, monkeypatch, window):
    g = torch.Generator().manual_seed(3)
    rows = _rows(2, 300, 64, window, device, g)
    queries = torch.randn(8, 20, 64, generator=g).to(device)
    qpos = torch.arange(880, 900, device=device)
    got = attention_received(queries, qpos, rows, scaling=0.125)
    monkeypatch.setenv("KVSTACK_KERNELS", "0")
    want = attention_received(queries, qpos, rows, scaling=0.125)
    assert got.shape == want.shape == (8, 300)
    assert torch.all(got[:4, -7:] == 0)  # padding receives nothing (query heads 0..3 share KV head 0)
    assert ((got - want).norm() / want.norm()) < 2e-3  # fp16 operands on the kernel path
    # each query's weights sum to one over what it may see: total = queries per head
    assert torch.allclose(got.sum(-1), want.sum(-1), rtol=1e-3)


def test_half_precision_inputs(device):
    from kvstack.kernels.triton_scores import attention_received as kernel

    g = torch.Generator().manual_seed(4)
    rows = _rows(2, 200, 64, None, device, g)
    queries = torch.randn(8, 16, 64, generator=g).to(device)
    qpos = torch.arange(600, 616, device=device)
    got = kernel(queries.half(), qpos, rows.keys.half(), rows.pos, rows.valid, 0.125)
    rows.keys = rows.keys.half().float()
    want = attention_received(queries.half().float(), qpos, rows, scaling=0.125)
    assert ((got - want).norm() / want.norm()) < 2e-3


def test_float32_inputs_get_exact_products(device, monkeypatch):
    from kvstack.kernels.triton_scores import attention_received as kernel

    g = torch.Generator().manual_seed(5)
    rows = _rows(2, 100, 64, None, device, g)
    queries = torch.randn(4, 16, 64, generator=g).to(device)
    qpos = torch.arange(300, 316, device=device)
    got = kernel(queries, qpos, rows.keys, rows.pos, rows.valid, 0.125)
    monkeypatch.setenv("KVSTACK_KERNELS", "0")
    want = attention_received(queries, qpos, rows, scaling=0.125)
    assert ((got - want).norm() / want.norm()) < 1e-5
