"""Unit tests of the selection helpers on synthetic data (no model)."""

from __future__ import annotations

import pytest
import torch

from kvstack.kv import KVLayer
from kvstack.stages.select.alloc import adakv_keep, distribute, head_request, pyramid_weights, topk_keep
from kvstack.stages.select.scores import LayerRows, attention_received, newest_rows


def test_head_request_rounds_half_up_and_keeps_one():
    assert [head_request(48, f) for f in (0.25, 0.3, 0.01, 1.0)] == [12, 14, 1, 48]
    assert head_request(5, 0.5) == 3 and head_request(0, 0.5) == 0


def test_distribute_proportional_with_caps_and_floors():
    assert distribute(10, [1, 1], [10, 10], [0, 0]) == [5, 5]
    assert distribute(9, [1, 1], [10, 10], [0, 0]) == [5, 4]  # tie: lower index
    assert distribute(20, [3, 1], [8, 20], [0, 0]) == [8, 12]  # capped share moves on
    assert distribute(10, [1, 0], [10, 10], [0, 2]) == [8, 2]  # floors hold
    with pytest.raises(ValueError):
        distribute(30, [1, 1], [10, 10], [0, 0])


def test_pyramid_weights_are_linear_with_mean_one():
    w = pyramid_weights(5, 20.0)
    assert w[0] == pytest.approx(1.95) and w[-1] == pytest.approx(0.05)
    assert sum(w) / 5 == pytest.approx(1.0)
    assert all(a - b == pytest.approx(w[0] - w[1]) for a, b in zip(w, w[1:], strict=False))
    assert pyramid_weights(3, 1.0) == [1.0, 1.0, 1.0] and pyramid_weights(1, 20.0) == [1.0]


def test_topk_keep_forced_first_then_best():
    scores = torch.tensor([[5.0, 1.0, 4.0, 4.0, 0.0], [0.0, 1.0, 2.0, 3.0, 4.0]])
    forced = torch.zeros(2, 5, dtype=torch.bool)
    forced[:, 4] = True
    free = ~forced
    keep = topk_keep(scores, free, forced, [3, 2])
    assert [k.tolist() for k in keep] == [[0, 2, 4], [3, 4]]  # 4.0 tie -> earlier row 2


def test_adakv_floor_and_exact_total():
    # head 0 concentrated, head 1 flat: head 1 should get most of the budget, head 0 its floor
    scores = torch.tensor([[100.0] + [0.01] * 19, [1.0] * 20])
    free = torch.ones(2, 20, dtype=torch.bool)
    forced = torch.zeros_like(free)
    keep = adakv_keep(scores, free, forced, [5, 5], log_scores=False)
    assert keep[0].tolist() == [0] and keep[1].numel() == 9  # floor(0.2 * 10 / 2) = 1 row for head 0
    keep = adakv_keep(scores, free, forced, [10, 10], log_scores=False)
    assert keep[0].tolist() == [0, 1] and keep[1].numel() == 18  # floor 2; ties -> earlier rows


def test_attention_received_chunks_and_masks():
    torch.manual_seed(0)
    k = torch.randn(2, 10, 8)
    layer = KVLayer.from_dense(k, k.clone(), torch.arange(20, 30), sliding_window=6)
    rows = LayerRows(layer)
    q = torch.randn(4, 3, 8)
    pos = torch.tensor([27, 28, 29])
    whole = attention_received(q, pos, rows)
    assert torch.allclose(whole, attention_received(q, pos, rows, block=1))
    assert torch.allclose(whole.sum(dim=1), torch.full((4,), 3.0))  # each query's softmax sums to 1
    assert (whole[:, :2] == 0).all()  # positions 20, 21 are outside every query's window of 6
    by_hand = torch.softmax(q[1, 2] @ k[0, 4:].T * 8**-0.5, dim=0)  # query head 1 is in KV head 0's group
    assert torch.allclose(attention_received(q[:, 2:], pos[2:], rows)[1, 4:], by_hand, atol=1e-6)


def test_newest_rows_on_ragged_layer():
    k = torch.randn(6, 4)
    layer = KVLayer.from_dense(k.view(2, 3, 4), k.view(2, 3, 4)).select_rows(
        [torch.tensor([0, 2]), torch.arange(3)]
    )
    rows = LayerRows(layer)
    assert rows.pos.tolist() == [[0, 2, 0], [0, 1, 2]] and rows.valid.tolist() == [
        [True, True, False],
        [True] * 3,
    ]
    assert newest_rows(rows, [1, 2]).tolist() == [[False, True, False], [False, True, True]]
