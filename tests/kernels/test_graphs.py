"""Graph-capturable decode steps: the fast path's buckets, and ``graphs=True`` through the kernels.

On a CPU (Triton's interpreter) every step runs eagerly; what is checked there is the part a
captured step relies on - the kernels answer every step, the bucket key stays the same while the
tails have room and changes when they grow, a layer that fell back is never captured. On CUDA the
same tests capture and replay (``test_replayed_steps_equal_eager_steps``, skipped elsewhere).
"""

from __future__ import annotations

import pytest
import torch

import kvstack
from kvstack.hf import decode_tail
from kvstack.hf.compat import cache_kwargs
from kvstack.hf.graphs import GraphedStep
from tests.hf.test_step_loop import check_loop_equals_generate
from tests.kernels.test_fast_decode import _model


def test_bucket_key_holds_while_the_tails_have_room(device, make_ids, monkeypatch):
    monkeypatch.setattr(decode_tail, "TAIL_BLOCK", 4)
    model = _model(device)
    hf = kvstack.hf.CompressedCache(kvstack.compress(model, make_ids(64).to(device), "int4:g16"), model.dtype)
    assert hf.graph_key(1) is None  # nothing ran through the kernels yet
    keys = []
    with kvstack.hf.enable(model), torch.no_grad():
        ids = make_ids(2, seed=1).to(device).view(1, -1)
        for n in range(6):
            model(input_ids=ids, **cache_kwargs(hf), use_cache=True)
            ids = torch.tensor([[5 + n]], device=device)
            keys.append(hf.graph_key(1))
    # tails hold 2, 3, 4 (full: a step must run eagerly), 5 and 6 of 8 (a new bucket), 7 of 8
    assert keys[0] == keys[1] is not None and keys[2] is None
    assert keys[3] == keys[4] == keys[5] is not None and keys[3] != keys[0]
    assert all(layer.decode_tail.capacity == 8 for layer in hf.layers)


def test_a_step_that_fell_back_is_not_captured(device, make_ids):
    model = _model(device)
    hf = kvstack.hf.CompressedCache(kvstack.compress(model, make_ids(64).to(device), "int4:g16"), model.dtype)
    with kvstack.hf.enable(model), torch.no_grad():
        # 40 question tokens x 2 query heads per KV head: more rows than one program holds -> generic path
        model(input_ids=make_ids(40, seed=2).to(device).view(1, -1), **cache_kwargs(hf), use_cache=True)
        assert hf.graph_key(1) is None
        model(input_ids=torch.tensor([[7]], device=device), **cache_kwargs(hf), use_cache=True)
        assert hf.graph_key(1) is not None  # a decode step through the kernels again


def test_graphs_loop_through_the_kernels_equals_generate(device, make_ids):
    ctxs = [make_ids(n, seed=n).to(device) for n in (70, 96)]
    qs = [make_ids(n, seed=20 + n).to(device) for n in (3, 1)]
    check_loop_equals_generate(_model(device), ctxs, qs, "snapkv:0.5 > int4:g16", 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_replayed_steps_equal_eager_steps(make_ids):
    model = _model(torch.device("cuda"))
    cache = kvstack.compress(model, make_ids(200).cuda(), "int4")
    logits = {}
    for graphs in (False, True):
        hf = kvstack.hf.CompressedCache(cache, model.dtype)
        with kvstack.hf.enable(model), torch.no_grad():
            model(input_ids=make_ids(3, seed=1).cuda().view(1, -1), **cache_kwargs(hf), use_cache=True)
            step, rows = GraphedStep(model, hf, enabled=graphs), []
            for n in range(80):  # crosses a bucket (64 new tokens)
                tok = torch.tensor([[3 + n % 50]], device="cuda")
                rows.append(step(tok, torch.tensor([[203 + n]], device="cuda")).float().clone())
        logits[graphs] = torch.stack(rows)
        if graphs:
            assert step.counts["replayed"] > 60 and step.counts["captured"] == 2, step.counts
    assert torch.allclose(logits[True], logits[False], rtol=1e-4, atol=1e-4)
