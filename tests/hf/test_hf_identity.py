"""Identity compression must be invisible: decoding through a CompressedCache gives the same
logits as a plain Hugging Face DynamicCache, on every supported architecture (GQA everywhere,
sliding-window layers with contexts longer than the window)."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

import kvstack
from kvstack.hf import CompressedCache, enable
from kvstack.hf.compat import cache_kwargs

ARCHS = ("llama", "mistral", "mistral_swa", "qwen2", "qwen3", "gemma2", "gemma3", "phi3")
CONTEXT = 40
STEPS = 20


@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_identity_decode_matches_dynamic_cache(arch, tiny_model, make_ids):
    model = tiny_model(arch)
    ctx = make_ids(CONTEXT, seed=1)
    window = getattr(model.config, "sliding_window", None)
    if window is not None:
        assert CONTEXT > window  # the sliding layers really evict during prefill and decoding

    # Reference: one-shot prefill into the model's own DynamicCache, then greedy steps.
    ref_cache = DynamicCache(config=model.config)
    out = model(input_ids=ctx.view(1, -1), **cache_kwargs(ref_cache), use_cache=True)
    tokens, ref_logits = [int(out.logits[0, -1].argmax())], []
    for _ in range(STEPS):
        out = model(input_ids=torch.tensor([[tokens[-1]]]), **cache_kwargs(ref_cache), use_cache=True)
        ref_logits.append(out.logits[0, -1])
        tokens.append(int(out.logits[0, -1].argmax()))

    kv = kvstack.compress(model, ctx, "identity")
    assert kv.context_length == CONTEXT
    # Identity keeps exactly what a plain cache keeps; sliding layers also store their kept positions.
    positions_bytes = sum(4 * layer.positions.numel() for layer in kv.layers if layer.positions is not None)
    assert kv.nbytes == kv.dense_nbytes + positions_bytes
    hf_cache = CompressedCache(kv, torch.float32)
    with enable(model):
        for step in range(STEPS):
            out = model(input_ids=torch.tensor([[tokens[step]]]), **cache_kwargs(hf_cache), use_cache=True)
            torch.testing.assert_close(
                out.logits[0, -1], ref_logits[step], atol=1e-5, rtol=0, msg=lambda m, s=step: f"step {s}: {m}"
            )
    assert hf_cache.get_seq_length() == CONTEXT + STEPS
    # The model is left as it was after the `enable` block.
    assert not model.config._attn_implementation.startswith("kvstack_")
    if window is not None:
        # Sliding layers of the compressed cache hold no more than a plain sliding cache would.
        for layer, w in zip(hf_cache.layers, kvstack.hf.model_info(model).sliding_windows, strict=True):
            if w is not None:
                held = layer.base.max_length + (0 if layer.tail_k is None else layer.tail_k.shape[1])
                assert held <= w - 1


@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_identity_generate_matches_model_generate(arch, tiny_model, make_ids):
    model = tiny_model(arch)
    ctx, question = make_ids(CONTEXT, seed=2), make_ids(5, seed=3)
    full = torch.cat([ctx, question]).view(1, -1)
    ref = model.generate(
        full, attention_mask=torch.ones_like(full), max_new_tokens=10, do_sample=False, pad_token_id=0
    )[0, full.shape[1]:]
    kv = kvstack.compress(model, ctx, "identity")
    got = kvstack.generate(model, kv, question, max_new_tokens=10)
    assert got.dtype == torch.long
    assert got.tolist() == ref.tolist()
    # The KVCache is not consumed: a second generation from it gives the same answer.
    assert kvstack.generate(model, kv, question, max_new_tokens=10).tolist() == ref.tolist()
