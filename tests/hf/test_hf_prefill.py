"""The chunked prefill driver: its captures and its dense cache, against one-shot references."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from kvstack.hf.compat import cache_kwargs
from kvstack.hf.model import model_info
from kvstack.hf.prefill import prefill
from kvstack.stack import NEED_ATTENTION, NEED_QUESTION_QUERIES, NEED_WINDOW_QUERIES

T, CHUNK, N_WINDOW, Q = 50, 16, 8, 5  # the last 8 context tokens straddle the chunk boundary at 48


def _rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """HF-convention RoPE of ``x [H, n, D]`` at ``positions [n]``, computed in float64."""
    d = x.shape[-1]
    inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    ang = positions.double()[:, None] * inv_freq[None, :]
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)
    x = x.double()
    rot = torch.cat([-x[..., d // 2 :], x[..., : d // 2]], dim=-1)
    return x * cos + rot * sin


def _q_proj_outputs(model, ids: torch.Tensor) -> dict[int, torch.Tensor]:
    """One-shot run over ``ids``; per layer the q_proj output as ``[Hq, n, D]`` (pre-RoPE)."""
    got: dict[int, torch.Tensor] = {}
    hooks = [
        layer.self_attn.q_proj.register_forward_hook(lambda m, a, out, i=i: got.__setitem__(i, out.detach()))
        for i, layer in enumerate(model.model.layers)
    ]
    try:
        model(input_ids=ids.view(1, -1))
    finally:
        for h in hooks:
            h.remove()
    return {i: q[0].view(q.shape[1], 4, 16).transpose(0, 1) for i, q in got.items()}


@pytest.mark.parametrize("arch", ["llama", "mistral_swa", "gemma2", "gemma3"])
@torch.no_grad()
def test_attention_capture_equals_eager_column_sums(arch, tiny_model, make_ids):
    model = tiny_model(arch)
    ctx = make_ids(T, seed=9)
    impl = model.config._attn_implementation
    model.set_attn_implementation("eager")
    ref = model(input_ids=ctx.view(1, -1), output_attentions=True)
    model.set_attn_implementation(impl)

    info = model_info(model)
    pre = prefill(model, info, ctx, frozenset({NEED_ATTENTION}), chunk_size=CHUNK)
    captured = pre.captures[NEED_ATTENTION]
    assert sorted(captured) == list(range(info.num_layers))
    for layer, probs in enumerate(ref.attentions):
        expected = probs[0].float().sum(dim=1)  # [Hq, T]: attention each key received
        assert captured[layer].shape == (4, T)
        torch.testing.assert_close(captured[layer], expected, atol=1e-5, rtol=0)
        # Every query spreads one unit of attention: the column sums add up to T per head.
        torch.testing.assert_close(captured[layer].sum(dim=1), torch.full((4,), float(T)), atol=1e-3, rtol=0)
    if info.sliding_windows[0] is not None:
        # Keys older than the window from the last query get attention only from early queries.
        w = info.sliding_windows[0]
        assert float(captured[0][:, 0].max()) <= w  # at most w queries can see key 0


@torch.no_grad()
def test_window_and_question_queries_are_post_rope(tiny_model, make_ids):
    model = tiny_model("llama")
    ctx, question = make_ids(T, seed=10), make_ids(Q, seed=11)
    theta = model.config.rope_parameters["rope_theta"]
    info = model_info(model)
    needs = frozenset({NEED_WINDOW_QUERIES, NEED_QUESTION_QUERIES})
    pre = prefill(model, info, ctx, needs, question_ids=question, window_queries=N_WINDOW, chunk_size=CHUNK)

    raw = _q_proj_outputs(model, torch.cat([ctx, question]))  # one-shot, context then question
    window = pre.captures[NEED_WINDOW_QUERIES]
    asked = pre.captures[NEED_QUESTION_QUERIES]
    for layer in range(info.num_layers):
        exp_w = _rope(raw[layer][:, T - N_WINDOW : T], torch.arange(T - N_WINDOW, T), theta)
        assert window[layer].shape == (4, N_WINDOW, 16)
        torch.testing.assert_close(window[layer].double(), exp_w, atol=1e-5, rtol=0)
        exp_q = _rope(raw[layer][:, T:], torch.arange(T, T + Q), theta)
        assert asked[layer].shape == (4, Q, 16)
        torch.testing.assert_close(asked[layer].double(), exp_q, atol=1e-5, rtol=0)
    # The question was only scored: the cache holds the context, nothing more.
    assert pre.cache.context_length == T
    assert all(layer.max_length == T for layer in pre.cache.layers)


@torch.no_grad()
def test_no_captures_unless_asked(tiny_model, make_ids):
    model = tiny_model("llama")
    pre = prefill(model, model_info(model), make_ids(20), frozenset(), window_queries=8, chunk_size=8)
    assert pre.captures == {}


@pytest.mark.parametrize("arch", ["llama", "qwen3", "mistral_swa", "gemma2", "gemma3"])
@torch.no_grad()
def test_chunked_prefill_cache_equals_one_shot(arch, tiny_model, make_ids):
    model = tiny_model(arch)
    ctx = make_ids(T, seed=12)
    info = model_info(model)
    pre = prefill(model, info, ctx, chunk_size=CHUNK)

    dc = DynamicCache(config=model.config)
    out = model(input_ids=ctx.view(1, -1), **cache_kwargs(dc), use_cache=True)
    torch.testing.assert_close(pre.last_logits, out.logits[0, -1].float(), atol=1e-5, rtol=0)
    for i, layer in enumerate(pre.cache.layers):
        k, v, pos, valid = layer.padded()
        ref_k, ref_v = dc.layers[i].keys[0], dc.layers[i].values[0]
        assert k.shape == ref_k.shape  # sliding layers keep window-1 tokens, like the plain cache
        torch.testing.assert_close(k, ref_k, atol=1e-5, rtol=0)
        torch.testing.assert_close(v, ref_v, atol=1e-5, rtol=0)
        assert bool(valid.all())
        n = ref_k.shape[1]
        assert pos.tolist() == [list(range(T - n, T))] * info.num_kv_heads
        assert layer.sliding_window == info.sliding_windows[i]
    assert pre.cache.dense_layout == [(2, 16, w) for w in info.sliding_windows]
