"""attention_errors on tiny models of several families: zero for the same cache, ordered by bit width, and equal
to a direct Llama computation (queries re-derived by hand from q_proj and the rotary table)."""

from __future__ import annotations

import statistics

import pytest
import torch

import kvstack
from kvstack.errors import InputError
from kvstack.eval.attention_error import attention_errors, head_rows


def _caches(model, ids, recipes):
    return {r: kvstack.compress(model, ids, r) for r in recipes}


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gemma3", "qwen3"])
def test_same_cache_is_exact_and_fewer_bits_move_attention_more(tiny_model, make_ids, arch):
    model = tiny_model(arch)
    ctx, question = make_ids(96, seed=1), make_ids(6, seed=2)
    c = _caches(model, ctx, ["identity", "int8", "int2"])
    same = attention_errors(model, c["identity"], c["identity"], question)
    assert len(same) == model.config.num_hidden_layers
    assert all(e.relative == 0.0 and e.top1_changed == 0.0 for e in same)
    err8 = statistics.mean(e.relative for e in attention_errors(model, c["identity"], c["int8"], question))
    err2 = statistics.mean(e.relative for e in attention_errors(model, c["identity"], c["int2"], question))
    assert 0.0 < err8 < 0.05 and err2 > 3 * err8


@torch.no_grad()
def _llama_reference(model, full, cache, question) -> list[float]:
    """The Llama computation written out: input norm, q_proj, RoPE at the question's positions."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    inner = model.model
    n_ctx = full.context_ids.numel()
    ids = torch.cat([full.context_ids.long(), question.long()]).view(1, -1)
    hidden = model(ids, output_hidden_states=True).hidden_states
    pos = torch.arange(n_ctx, ids.shape[1]).view(1, -1)
    cos, sin = inner.rotary_emb(hidden[0][:, n_ctx:], pos)
    out = []
    for i, (lf, lq) in enumerate(zip(full.layers, cache.layers)):
        attn = inner.layers[i].self_attn
        h = inner.layers[i].input_layernorm(hidden[i][:, n_ctx:])
        q = attn.q_proj(h).view(1, h.shape[1], -1, attn.head_dim).transpose(1, 2)
        q = apply_rotary_pos_emb(q, q, cos, sin)[0][0].double()
        (kf, vf), (kq, vq) = head_rows(lf), head_rows(lq)
        group, rel = q.shape[0] // len(kf), []
        for hq in range(q.shape[0]):
            kv = hq // group
            of = torch.softmax(q[hq] @ kf[kv].double().T * attn.scaling, -1) @ vf[kv].double()
            oq = torch.softmax(q[hq] @ kq[kv].double().T * attn.scaling, -1) @ vq[kv].double()
            rel.append(((of - oq).norm(dim=-1) / of.norm(dim=-1)).mean().item())
        out.append(sum(rel) / len(rel))
    return out


def test_llama_errors_match_a_direct_float64_computation(tiny_model, make_ids):
    model = tiny_model("llama")
    ctx, question = make_ids(80, seed=3), make_ids(5, seed=4)
    c = _caches(model, ctx, ["identity", "int4"])
    got = [e.relative for e in attention_errors(model, c["identity"], c["int4"], question)]
    assert got == pytest.approx(_llama_reference(model, c["identity"], c["int4"], question), rel=1e-3, abs=1e-6)


def test_no_question_is_a_typed_error(tiny_model, make_ids):
    model = tiny_model("llama")
    full = kvstack.compress(model, make_ids(32), "identity")
    with pytest.raises(InputError, match="question"):
        attention_errors(model, full, full, torch.empty(0, dtype=torch.long))
