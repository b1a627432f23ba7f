"""KIVI's streaming quantization: tokens generated after compression are quantized in
blocks of `group` as the dense tail fills, keeping the newest `residual` dense."""

import torch

import kvstack
from kvstack.hf.cache import CompressedLayer
from kvstack.hf.compat import cache_kwargs
from kvstack.kv import DenseRows


def _kivi_layer(heads=2, tokens=12, dim=8, residual=4, group=4):
    from kvstack.stack import parse_stage

    torch.manual_seed(0)

    dense = kvstack.KVLayer.from_dense(torch.randn(heads, tokens, dim), torch.randn(heads, tokens, dim))
    return parse_stage(f"kivi:2,group={group},residual={residual}").apply_layer(0, dense, None)


def test_generated_tokens_are_quantized_in_blocks_within_the_step_bound():
    residual, group, heads, dim = 4, 4, 2, 8
    layer = CompressedLayer(_kivi_layer(heads, 12, dim, residual, group), seen=12, dtype=torch.float32)
    torch.manual_seed(1)
    fed_k, fed_v = [], []
    for _ in range(17):
        k, v = torch.randn(1, heads, 1, dim), torch.randn(1, heads, 1, dim)
        fed_k.append(k[0, :, 0])
        fed_v.append(v[0, :, 0])
        layer.update(k, v)
        assert layer.tail_k.shape[1] < residual + group  # the tail never outgrows residual + block
    # 17 tokens: 3 blocks of 4 quantized (12 tokens), 5 dense in the tail
    assert len(layer.segments) == 1 + 3 and layer.tail_k.shape[1] == 5
    fed_k, fed_v = torch.stack(fed_k, 1), torch.stack(fed_v, 1)  # [H, 17, D]
    for b, seg in enumerate(layer.segments[1:]):
        assert not isinstance(seg.keys, DenseRows)
        assert seg.row_positions().tolist() == [12 + b * group + i for i in range(group)] * heads
        k_true = fed_k[:, b * group : (b + 1) * group].reshape(-1, dim)
        k_hat = seg.keys.decode()
        # keys per channel over the block's 4 tokens: 2 bits = 3 steps, error <= half a step
        rng = (k_true.view(heads, group, dim).amax(1) - k_true.view(heads, group, dim).amin(1))
        bound = (rng / 3 / 2 * 1.01 + 1e-3).repeat_interleave(group, 0)
        assert bool(((k_hat - k_true).abs() <= bound).all())
        v_true = fed_v[:, b * group : (b + 1) * group].reshape(-1, dim)
        v_rng = v_true.amax(1, keepdim=True) - v_true.amin(1, keepdim=True)
        assert bool(((seg.values.decode() - v_true).abs() <= v_rng / 3 / 2 * 1.01 + 1e-3).all())
    # the cache now holds fewer bytes than the same tokens dense
    dense_bytes = 2 * heads * (12 + 17) * dim * 4
    assert layer.nbytes < 0.6 * dense_bytes


def test_kivi_generate_through_model_generate_matches_the_step_loop(tiny_model, make_ids):
    model = tiny_model("llama")
    ctx, q = make_ids(40), make_ids(3, seed=2)
    cache = kvstack.compress(model, ctx, "kivi:2,group=4,residual=4")
    out = kvstack.generate(model, cache, q, max_new_tokens=12)
    hf = kvstack.hf.CompressedCache(cache, model.dtype)
    ids, steps = q[None], []
    with kvstack.hf.enable(model), torch.no_grad():
        for _ in range(12):
            logits = model(input_ids=ids, **cache_kwargs(hf), use_cache=True).logits
            ids = logits[:, -1:].argmax(-1)
            steps.append(int(ids))
    assert out.tolist() == steps
    assert all(len(layer.segments) > 1 for layer in hf.layers)  # generated tokens were quantized
