"""The prefill driver under H2O: exact sums computed with the attention itself leave the model's
outputs unchanged; strided sums equal the weighted sums of the model's own attention."""

from __future__ import annotations

import pytest
import torch

import kvstack.hf.attention_scored as scored
from kvstack.hf.model import model_info
from kvstack.hf.prefill import prefill
from kvstack.stages.select.h2o import attention_need

T, CHUNK = 50, 16


def eager_probs(model, ctx):
    impl = model.config._attn_implementation
    model.set_attn_implementation("eager")
    with torch.no_grad():
        out = model(input_ids=ctx.view(1, -1), output_attentions=True)
    model.set_attn_implementation(impl)
    return [a[0].double() for a in out.attentions]  # [Hq, T, T] per layer


def count_fused(monkeypatch) -> list[int]:
    calls = [0]
    real = scored.attend_and_score

    def counted(query, key, value, *a, **k):
        calls[0] += value is not key  # a scoring-only pass passes the keys as dummy values
        return real(query, key, value, *a, **k)

    monkeypatch.setattr(scored, "attend_and_score", counted)
    return calls


@pytest.mark.parametrize("arch,impl,fused", [
    ("llama", None, True), ("qwen3", None, True), ("mistral_swa", None, True), ("gemma3", None, True),
    ("gemma2", None, True),  # eager with its softcap: the fused path applies the softcap too
    ("gemma2", "sdpa", False),  # transformers' SDPA drops the softcap: the model keeps its own attention
])
def test_exact_h2o_prefill_leaves_the_model_unchanged(monkeypatch, tiny_model, make_ids, arch, impl, fused):
    model = tiny_model(arch)
    if impl:
        try:
            model.set_attn_implementation(impl)
        except ValueError as err:  # transformers 5.21+ refuses SDPA for Gemma 2 (it would drop the softcap)
            pytest.skip(f"this transformers has no {impl} for {arch}: {err}"[:200])
    ctx = make_ids(T, seed=3)
    info = model_info(model)
    plain = prefill(model, info, ctx, chunk_size=CHUNK)
    calls = count_fused(monkeypatch)
    h2o = prefill(model, info, ctx, frozenset({attention_need(1)}), chunk_size=CHUNK)
    assert (calls[0] == info.num_layers * 4) if fused else calls[0] == 0  # 4 chunks of 16 tokens
    torch.testing.assert_close(h2o.last_logits, plain.last_logits, atol=1e-5, rtol=0)
    for a, b in zip(h2o.cache.layers, plain.cache.layers, strict=True):
        torch.testing.assert_close(a.keys.decode(), b.keys.decode(), atol=1e-5, rtol=0)
        torch.testing.assert_close(a.values.decode(), b.values.decode(), atol=1e-5, rtol=0)
    if impl is None:  # (Gemma 2 under SDPA is another model than under eager: no eager reference)
        for layer, probs in enumerate(eager_probs(model, ctx)):
            torch.testing.assert_close(h2o.captures[attention_need(1)][layer].double(), probs.sum(dim=1),
                                       atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "mistral_swa", "gemma3"])
def test_strided_and_exact_sums_from_one_prefill(monkeypatch, tiny_model, make_ids, arch):
    monkeypatch.setattr(scored, "TAIL", 5)
    monkeypatch.setattr(scored, "BAND", 6)
    model = tiny_model(arch)
    ctx = make_ids(T, seed=4)
    info = model_info(model)
    pre = prefill(model, info, ctx, frozenset({attention_need(1), attention_need(4)}), chunk_size=CHUNK)
    assert attention_need(4) == "attention:stride=4"
    # picked queries: 49, 45, ..., 1 (weight 4) and the tail 45..49 (weight 1); queries 0-5 positions
    # after a key count 1 whether picked or not
    weights = {p: 4.0 for p in range(49, -1, -4)} | {p: 1.0 for p in range(45, 50)}
    dist = torch.arange(T).view(-1, 1) - torch.arange(T).view(1, -1)
    w = torch.tensor([weights.get(p, 0.0) for p in range(T)], dtype=torch.float64).view(-1, 1).expand(T, T)
    w = torch.where((dist >= 0) & (dist < 6), torch.ones((), dtype=torch.float64), w)
    for layer, probs in enumerate(eager_probs(model, ctx)):
        torch.testing.assert_close(pre.captures[attention_need(1)][layer].double(), probs.sum(dim=1),
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(pre.captures[attention_need(4)][layer].double(), (probs * w).sum(dim=1),
                                   atol=1e-4, rtol=0)


def test_strided_prefill_keeps_sdpa_bits(monkeypatch, tiny_model, make_ids):
    """With only a strided estimate asked for, SDPA models run the same flash kernel: same bits."""
    model = tiny_model("llama")
    ctx = make_ids(T, seed=5)
    info = model_info(model)
    calls = count_fused(monkeypatch)
    plain = prefill(model, info, ctx, chunk_size=CHUNK)
    strided = prefill(model, info, ctx, frozenset({attention_need(8)}), chunk_size=CHUNK)
    assert calls[0] == 0
    assert torch.equal(strided.last_logits, plain.last_logits)
    for a, b in zip(strided.cache.layers, plain.cache.layers, strict=True):
        assert torch.equal(a.keys.decode(), b.keys.decode()) and torch.equal(a.values.decode(), b.values.decode())
