"""rope_tables undoes exactly the rotation each architecture applied: un-rotating the cached keys
gives the keys the model computed before RoPE (captured with a forward hook), layer by layer."""

from __future__ import annotations

import pytest
import torch

from kvstack.hf.model import model_info
from kvstack.hf.prefill import prefill
from kvstack.inspect.rope import rope_tables

ARCHS = ("llama", "mistral", "mistral_swa", "qwen2", "qwen3", "gemma2", "gemma3", "phi3")


def _hook_pre_rope_keys(model, info, store: dict) -> list:
    """Forward hooks recording each layer's keys right before RoPE, as ``[H_kv, T, D]``."""
    h, d = info.num_kv_heads, info.head_dim
    qd = info.num_query_heads * d
    hooks = []
    for i, layer in enumerate(model.model.layers):
        att = layer.self_attn
        if hasattr(att, "qkv_proj"):  # phi3: fused projection, keys after the queries
            fn = lambda mod, inp, out, i=i: store.__setitem__(i, out[0, :, qd : qd + h * d].reshape(-1, h, d)
                                                              .transpose(0, 1))
            hooks.append(att.qkv_proj.register_forward_hook(fn))
        elif hasattr(att, "k_norm"):  # qwen3 normalizes [T, H, D], gemma3 [H, T, D]
            def fn(mod, inp, out, i=i):
                x = out[0]
                store[i] = x if x.shape[0] == h and x.shape[1] != h else x.transpose(0, 1)
            hooks.append(att.k_norm.register_forward_hook(fn))
        else:
            fn = lambda mod, inp, out, i=i: store.__setitem__(i, out[0].reshape(-1, h, d).transpose(0, 1))
            hooks.append(att.k_proj.register_forward_hook(fn))
    return hooks


@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_unrotated_cache_keys_are_the_pre_rope_keys(arch, tiny_model, make_ids):
    model = tiny_model(arch)
    info = model_info(model)
    seen: dict[int, torch.Tensor] = {}
    hooks = _hook_pre_rope_keys(model, info, seen)
    try:
        cache = prefill(model, info, make_ids(30), frozenset()).cache
    finally:
        for hook in hooks:
            hook.remove()
    tables = rope_tables(model)
    for i, layer in enumerate(cache.layers):
        n = layer.max_length  # sliding layers keep the newest tokens only
        expect = seen[i][:, -n:].reshape(-1, info.head_dim).double()
        got = tables[i].unrotate(layer.keys.decode().double(), layer.row_positions())
        assert float((got - expect).abs().max()) < 1e-5
        assert float((layer.keys.decode().double() - expect).abs().max()) > 1e-2  # RoPE really moved them
    if arch == "gemma3":  # sliding and full layers rotate with different bases
        assert not torch.equal(tables[0].inv_freq, tables[1].inv_freq)
