"""The data model: ragged heads without padding, exact byte counts, row selection."""

import torch

from kvstack.kv import DenseRows, KVCache, KVLayer


def test_from_dense_is_head_major_and_counts_bytes():
    k = torch.randn(3, 5, 4)
    layer = KVLayer.from_dense(k, k * 2)
    assert layer.lengths == (3 * (5,))[:3] and layer.keys.shape == (15, 4)
    assert torch.equal(layer.keys.decode()[5:10], k[1])
    assert layer.nbytes == 2 * 3 * 5 * 4 * 4  # fp32 K and V, no positions stored


def test_ragged_select_stores_only_kept_rows_and_exact_positions():
    k = torch.randn(2, 6, 4, dtype=torch.float64)
    layer = KVLayer.from_dense(k, -k)
    out = layer.select_rows([torch.tensor([0, 5]), torch.tensor([1, 2, 3])])
    assert out.lengths == (2, 3)
    assert out.keys.shape == (5, 4)  # nothing padded
    assert out.row_positions().tolist() == [0, 5, 1, 2, 3]
    assert out.nbytes == 2 * 5 * 4 * 8 + 5 * 4  # K, V float64 + int32 per-row positions
    kp, vp, pos, valid = out.padded()
    assert kp.shape == (2, 3, 4) and valid.tolist() == [[True, True, False], [True, True, True]]
    assert torch.equal(kp[0, 1], k[0, 5]) and torch.equal(vp[1, 2], -k[1, 3])
    assert pos[1].tolist() == [1, 2, 3]


def test_uniform_selection_shares_positions_and_prefix_stores_none():
    layer = KVLayer.from_dense(torch.randn(3, 8, 2), torch.randn(3, 8, 2))
    same = layer.select_rows([torch.tensor([0, 6, 7])] * 3)
    assert same.positions.tolist() == [0, 6, 7]  # stored once for all heads
    prefix = layer.select_rows([torch.arange(4)] * 3)
    assert prefix.positions is None and prefix.max_length == 4


def test_cache_dense_bytes_follow_model_dtype_and_sliding_windows():
    layers = [KVLayer.from_dense(torch.randn(2, 10, 4), torch.randn(2, 10, 4))] * 2
    cache = KVCache(layers=layers, context_ids=torch.arange(10, dtype=torch.int32), dense_dtype=torch.float16,
                    dense_layout=[(2, 4, None), (2, 4, 4)])
    # global layer: 10 tokens; sliding (W=4): a plain cache keeps W-1 = 3 tokens
    assert cache.dense_nbytes == 2 * 2 * 4 * 10 * 2 + 2 * 2 * 4 * 3 * 2
    assert cache.nbytes == 2 * (2 * 2 * 10 * 4 * 4)
    assert DenseRows(torch.zeros(3, 2)).nbytes == 24


def test_ratio_names_its_baseline():
    import pytest

    from kvstack.errors import InputError

    layers = [KVLayer.from_dense(torch.randn(2, 10, 4).half(), torch.randn(2, 10, 4).half())]
    cache = KVCache(layers=layers, context_ids=torch.arange(10), dense_dtype=torch.float32,
                    dense_layout=[(2, 4, None)])
    assert cache.nbytes == 2 * 2 * 10 * 4 * 2  # fp16 rows
    assert cache.dense_dtype_name == "fp32"
    assert cache.ratio == cache.ratio_vs("model") == cache.ratio_vs("fp32") == 2.0
    assert cache.ratio_vs("fp16") == cache.ratio_vs("bf16") == 1.0
    assert cache.ratio_vs() == 1.0  # fp16 is the default baseline: the one papers and presets quote
    with pytest.raises(InputError, match="fp16, bf16, fp32, model"):
        cache.ratio_vs("int8")
