"""``kvstack.generate`` through the kernels (packed rows, no materialization) equals the generic path."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import kvstack
from kvstack import kernels
from kvstack.hf import fast_decode


def _model(device):
    """A small Llama with head_dim 64, the narrowest the kernels take at 2 bits (16 channels a phase)."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=512,
                      initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval().to(device)


def _step_logits(model, cache, q_ids, steps):
    hf = kvstack.hf.CompressedCache(cache, model.dtype)
    ids, out = q_ids[None], []
    with kvstack.hf.enable(model), torch.no_grad():
        for _ in range(steps):
            logits = model(input_ids=ids, past_key_values=hf, use_cache=True).logits[0, -1].float()
            ids = logits.argmax(-1).view(1, 1)
            out.append(logits)
    return torch.stack(out)


@pytest.mark.parametrize("recipe", ["int4:g32", "snapkv:0.5,alloc=adakv > int4:g16", "int8:g16,axis=channel",
                                    "int2:g16,axis=channel", "snapkv:0.6"])
def test_kernel_steps_equal_generic_steps(device, make_ids, monkeypatch, recipe):
    model = _model(device)
    ctx, q = make_ids(96).to(device), make_ids(2, seed=3).to(device)
    cache = kvstack.compress(model, ctx, recipe)
    calls = []
    real = kernels.decode_attention
    monkeypatch.setattr(kernels, "decode_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    fast = _step_logits(model, cache, q, 6)
    assert len(calls) == 6 * model.config.num_hidden_layers  # every layer, every step took the kernel
    monkeypatch.setenv("KVSTACK_KERNELS", "0")
    generic = _step_logits(model, cache, q, 6)
    assert len(calls) == 6 * model.config.num_hidden_layers  # and the generic run did not
    assert torch.equal(fast.argmax(-1), generic.argmax(-1))
    err = (fast - generic).norm() / generic.norm()
    assert err < 5e-3, err


def test_long_query_chunks_and_other_layers_fall_back(device, make_ids, monkeypatch):
    model = _model(device)
    cache = kvstack.compress(model, make_ids(64).to(device), "int4:g32")
    hf = kvstack.hf.CompressedCache(cache, model.dtype)
    layer = hf.layers[0]
    long_q = torch.randn(1, 4, 40, 64, device=device)  # 2 heads x 40 tokens = 80 rows > MAX_QUERY_ROWS
    layer.update(torch.randn(1, 2, 40, 64, device=device), torch.randn(1, 2, 40, 64, device=device))
    step = fast_decode.plan_step(layer, torch.arange(64, 104, device=device))
    assert step is not None and step.attend(model.model.layers[0].self_attn, long_q, {}) is None
    kivi = kvstack.compress(model, make_ids(64).to(device), "kivi:2,group=32,residual=16")
    kivi_layer = kvstack.hf.CompressedCache(kivi, model.dtype).layers[0]
    kivi_layer.update(torch.randn(1, 2, 1, 64, device=device), torch.randn(1, 2, 1, 64, device=device))
    assert kivi_layer.tail_k is not None  # a step was taken, yet KIVI's decode blocks keep the generic path
    assert fast_decode.plan_step(kivi_layer, torch.arange(64, 65, device=device)) is None
