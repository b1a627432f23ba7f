"""Query-aware selection uses the model's own score scaling and softcap (Gemma 2 uses
``query_pre_attn_scalar`` instead of head_dim, and soft-caps logits)."""

import torch

import kvstack


def test_q2c_on_gemma2_matches_its_own_softcapped_attention(tiny_model, make_ids):
    model = tiny_model("gemma2")  # eager, scaling 32**-0.5 with head_dim 16, softcap 10
    ctx, question = make_ids(24, seed=3), make_ids(5, seed=4)
    cache = kvstack.compress(model, ctx, "q2c:0.25", question_ids=question)
    with torch.no_grad():
        att = model(torch.cat([ctx, question])[None], output_attentions=True).attentions
    t, layer = ctx.numel(), 1  # layer 1 attends globally
    a = att[layer][0, :, t:, :t].double()
    a = a / a.sum(-1, keepdim=True)  # each question query's softmax over the context only
    g = a.shape[0] // cache.layers[layer].num_heads
    scores = a.sum(1).reshape(-1, g, t).sum(1)  # fold the query group into its KV head
    pos = cache.layers[layer].row_positions()
    off = 0
    for h, n in enumerate(cache.layers[layer].lengths):
        expected = set(sorted(range(t), key=lambda p: (-float(scores[h, p]), p))[:n])
        assert set(pos[off : off + n].tolist()) == expected
        off += n
