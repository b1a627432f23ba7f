"""StreamingLLM through the Hugging Face path, checked against a hand-written float64 Llama.

The hand reference (``hf_reference.HandLlama``) computes the whole forward pass itself, so
these tests check the kept rows, the RoPE positions of new tokens (they continue from the
original length, not from the number of rows kept) and the attention masks by true position.
"""

from __future__ import annotations

import torch
from hf_reference import HandLlama, append, keep_positions

import kvstack
from kvstack.hf import CompressedCache, enable
from kvstack.hf.compat import cache_kwargs

T, SINK, WINDOW = 40, 4, 8
EXPECTED = list(range(SINK)) + list(range(T - WINDOW, T))


def _held_positions(layer) -> list[list[int]]:
    """Per KV head, the sorted original positions a CompressedLayer holds (base rows + tail)."""
    pos = layer.base.row_positions()
    out, off = [], 0
    tail = [] if layer.tail_k is None else layer.tail_pos.tolist()
    for n in layer.base.lengths:
        out.append(sorted(pos[off : off + n].tolist() + tail))
        off += n
    return out


@torch.no_grad()
def test_streaming_keeps_sinks_and_window_rows(tiny_model, make_ids):
    model = tiny_model("llama")
    ctx = make_ids(T, seed=4)
    full = kvstack.compress(model, ctx, "identity")
    kv = kvstack.compress(model, ctx, f"streaming:sink={SINK},window={WINDOW}")
    assert len(kv.layers) == 2
    for lf, ls in zip(full.layers, kv.layers, strict=True):
        assert ls.lengths == (SINK + WINDOW,) * 2
        per_head = ls.row_positions().view(2, -1)
        for h in range(2):
            assert per_head[h].tolist() == EXPECTED
        kf, vf, _, _ = lf.padded()
        ks, vs, _, _ = ls.padded()
        # The kept rows are the full cache's rows at those positions, bit for bit.
        assert torch.equal(ks, kf[:, EXPECTED])
        assert torch.equal(vs, vf[:, EXPECTED])
    # 12 of 40 rows per head, plus one shared int32 position per kept token and layer.
    row_bytes = full.nbytes // (2 * T)  # per (layer, token): K and V of both heads
    assert kv.nbytes == 2 * (SINK + WINDOW) * row_bytes + 2 * (SINK + WINDOW) * 4
    assert kv.dense_nbytes == full.dense_nbytes


@torch.no_grad()
def test_streaming_decode_matches_hand_reference(tiny_model, make_ids):
    model = tiny_model("llama")
    ctx = make_ids(T, seed=5)
    hand = HandLlama(model)
    full_past, logits = hand.prefill(ctx)
    past = keep_positions(full_past, lambda li, h, pos: (pos < SINK) | (pos >= T - WINDOW))

    kv = kvstack.compress(model, ctx, f"streaming:sink={SINK},window={WINDOW}")
    hf_cache = CompressedCache(kv, torch.float32)
    token = int(logits.argmax())
    evicted_differs = False
    with enable(model):
        for step in range(6):
            pos = T + step
            ref = hand.step(token, pos, past)
            out = model(input_ids=torch.tensor([[token]]), **cache_kwargs(hf_cache), use_cache=True)
            torch.testing.assert_close(out.logits[0, -1].double(), ref.logits, atol=1e-4, rtol=0)
            # Without eviction the answer would be different: the test sees the eviction.
            full_ref = hand.step(token, pos, full_past)
            evicted_differs |= bool((full_ref.logits - ref.logits).abs().max() > 1e-2)
            past = append(past, ref.new_kv, pos)
            full_past = append(full_past, full_ref.new_kv, pos)
            token = int(ref.logits.argmax())
    assert evicted_differs
    # Without a decode budget, generated tokens accumulate in the tail.
    for layer in hf_cache.layers:
        assert _held_positions(layer) == [EXPECTED + list(range(T, T + 6))] * 2


@torch.no_grad()
def test_streaming_decode_budget_evicts_while_generating(tiny_model, make_ids):
    model = tiny_model("llama")
    ctx = make_ids(T, seed=6)
    hand = HandLlama(model)
    full_past, logits = hand.prefill(ctx)
    kv = kvstack.compress(model, ctx, f"streaming:sink={SINK},window={WINDOW},decode=true")
    hf_cache = CompressedCache(kv, torch.float32)
    token = int(logits.argmax())
    steps = WINDOW + 4  # enough for every context window token to be evicted
    with enable(model):
        for step in range(steps):
            pos = T + step
            # The token at `pos` sees the sinks and the `WINDOW` tokens before it (plus itself).
            past = keep_positions(full_past, lambda li, h, p, pos=pos: (p < SINK) | (p >= pos - WINDOW))
            ref = hand.step(token, pos, past)
            out = model(input_ids=torch.tensor([[token]]), **cache_kwargs(hf_cache), use_cache=True)
            torch.testing.assert_close(out.logits[0, -1].double(), ref.logits, atol=1e-4, rtol=0)
            for layer in hf_cache.layers:
                held = _held_positions(layer)
                assert held == [list(range(SINK)) + list(range(pos - WINDOW + 1, pos + 1))] * 2
                assert layer.base.max_length + layer.tail_k.shape[1] == SINK + WINDOW
            full_past = append(full_past, ref.new_kv, pos)
            token = int(ref.logits.argmax())
    assert hf_cache.get_seq_length() == T + steps
    # The KVCache itself was not modified by generation.
    assert all(layer.lengths == (SINK + WINDOW,) * 2 for layer in kv.layers)


@torch.no_grad()
def test_streaming_on_sliding_window_model_keeps_window_in_sliding_layers(tiny_model, make_ids):
    model = tiny_model("gemma2")  # layer 0 slides over 8 tokens, layer 1 is global
    ctx = make_ids(T, seed=7)
    kv = kvstack.compress(model, ctx, f"streaming:sink={SINK},window={WINDOW}")
    sliding, global_ = kv.layers
    assert sliding.sliding_window == 8 and global_.sliding_window is None
    # The sliding layer only ever had the last window-1 tokens: no sinks survive there.
    assert sliding.row_positions().view(2, -1).tolist() == [list(range(T - 7, T))] * 2
    assert global_.row_positions().view(2, -1).tolist() == [EXPECTED] * 2


@torch.no_grad()
def test_generate_with_decode_budget_matches_manual_loop(tiny_model, make_ids):
    """`kvstack.generate` (model.generate + CompressedCache) == driving the cache by hand."""
    model = tiny_model("llama")
    ctx, question = make_ids(T, seed=18), make_ids(3, seed=19)
    kv = kvstack.compress(model, ctx, f"streaming:sink={SINK},window={WINDOW},decode=true")
    got = kvstack.generate(model, kv, question, max_new_tokens=12)

    hf_cache = CompressedCache(kv, torch.float32)
    tokens, ids = [], question.view(1, -1)
    with enable(model):
        for _ in range(12):
            out = model(input_ids=ids, **cache_kwargs(hf_cache), use_cache=True)
            tokens.append(int(out.logits[0, -1].argmax()))
            ids = torch.tensor([[tokens[-1]]])
    assert got.tolist() == tokens[: got.numel()]
    assert got.numel() == 12 or got[-1].item() == model.generation_config.eos_token_id
