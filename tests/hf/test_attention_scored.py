"""H2O's received-attention sums: the fused attention (output + column sums in one pass), the
flash kernel's log-sum-exps, the exact band and the strided estimate, against float64 references
written out from the definition."""

from __future__ import annotations

import pytest
import torch

import kvstack.hf.attention_scored as scored
from kvstack.hf.attention_scored import (
    ReceivedAttention,
    attend_and_score,
    band_sums,
    flash_with_lse,
    score_queries,
    strided_positions,
)

HQ, HK, D = 4, 2, 8


def masked_logits(q, k, q_start, scaling, softcap=None, window=None):
    """float64 logits ``[Hq, n, S]`` of ``q [Hq, n, D]`` (positions q_start..) against ``k [Hk, S, D]``
    (positions 0..S-1), -inf where causality or the window forbids."""
    g = q.shape[0] // k.shape[0]
    logits = q.double() @ k.double().repeat_interleave(g, 0).transpose(1, 2) * scaling
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    qpos = torch.arange(q_start, q_start + q.shape[1]).view(-1, 1)
    kpos = torch.arange(k.shape[1]).view(1, -1)
    ok = kpos <= qpos
    if window is not None:
        ok &= (qpos - kpos) < window
    return logits.masked_fill(~ok, float("-inf"))


def reference(q, k, v, q_start, scaling, softcap=None, window=None):
    """float64 attention output ``[n, Hq, D]`` and probabilities ``[Hq, n, S]``."""
    probs = torch.softmax(masked_logits(q, k, q_start, scaling, softcap, window), dim=-1)
    return (probs @ v.double().repeat_interleave(q.shape[0] // k.shape[0], 0)).transpose(0, 1), probs


def ref_lse(q, k, q_start, scaling, softcap=None, window=None):
    """float64 log-sum-exp ``[Hq, n]`` of each query's visible logits."""
    return masked_logits(q, k, q_start, scaling, softcap, window).logsumexp(-1)


def tensors(n, s, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(HQ, n, D, generator=gen) * 2, torch.randn(HK, s, D, generator=gen) * 2,
            torch.randn(HK, s, D, generator=gen))


@pytest.mark.parametrize("block", [1 << 21, 40])  # one block, and blocks of a few queries
@pytest.mark.parametrize("softcap,window", [(None, None), (5.0, None), (None, 6), (5.0, 6)])
@pytest.mark.parametrize("q_start", [0, 13])  # first prefill chunk, and a later one
def test_fused_output_and_sums_equal_float64(monkeypatch, block, softcap, window, q_start):
    monkeypatch.setattr(scored, "_BLOCK", block)
    n = 11
    q, k, v = tensors(n, q_start + n)
    total = torch.full((HQ, 30), 0.5)  # sums are added to what is there
    out, lse = attend_and_score(q, k, v, q_start, total, 0.3, softcap, window)
    ref_out, probs = reference(q, k, v, q_start, 0.3, softcap, window)
    assert out.shape == (n, HQ, D) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref_out, atol=1e-5, rtol=0)
    torch.testing.assert_close(lse.double(), ref_lse(q, k, q_start, 0.3, softcap, window), atol=1e-5, rtol=0)
    s = q_start + n
    torch.testing.assert_close(total[:, :s].double(), probs.sum(dim=1) + 0.5, atol=1e-5, rtol=0)
    assert bool((total[:, s:] == 0.5).all())  # keys not yet computed are untouched


def test_fused_output_keeps_a_half_precision_dtype():
    q, k, v = tensors(5, 9)
    out, _ = attend_and_score(q.bfloat16(), k.bfloat16(), v.bfloat16(), 4, torch.zeros(HQ, 9), D**-0.5)
    ref_out, _ = reference(q.bfloat16(), k.bfloat16(), v.bfloat16(), 4, D**-0.5)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), ref_out, atol=2e-2, rtol=0)  # bf16 rounding of the output


def test_strided_positions_by_hand(monkeypatch):
    monkeypatch.setattr(scored, "TAIL", 3)
    # context of 20 tokens, stride 4: 19, 15, 11, 7, 3 (weight 4) and the tail 17, 18, 19 (weight 1)
    idx, w = strided_positions(0, 20, 20, 4)
    assert dict(zip(idx.tolist(), w.tolist(), strict=True)) == {3: 4.0, 7: 4.0, 11: 4.0, 15: 4.0, 17: 1.0,
                                                                 18: 1.0, 19: 1.0}
    idx, w = strided_positions(8, 8, 20, 4)  # a chunk of positions 8..15: local indices 3 (11) and 7 (15)
    assert idx.tolist() == [3, 7] and w.tolist() == [4.0, 4.0]
    idx, w = strided_positions(0, 20, 20, 1)
    assert idx.tolist() == list(range(20)) and bool((w == 1).all())


def estimate_ref(probs, weights, band):
    """float64 strided estimate: every query within ``band`` positions after a key counts 1, farther
    ones count their weight (0 when not picked)."""
    n, t = probs.shape[1:]
    dist = torch.arange(n).view(-1, 1) - torch.arange(t).view(1, -1)
    w = torch.tensor([weights.get(p, 0.0) for p in range(n)], dtype=torch.float64).view(-1, 1).expand(n, t)
    w = torch.where((dist >= 0) & (dist < band), torch.ones((), dtype=torch.float64), w)
    return (probs * w).sum(dim=1)


@pytest.mark.parametrize("window", [None, 5, 2])
@pytest.mark.parametrize("softcap", [None, 4.0])
def test_band_plus_strided_equals_the_float64_estimate(monkeypatch, window, softcap):
    monkeypatch.setattr(scored, "TAIL", 3)
    monkeypatch.setattr(scored, "BAND", 4)
    monkeypatch.setattr(scored, "_BLOCK", 40)
    q, k, v = tensors(20, 20, seed=1)
    _, probs = reference(q, k, v, 0, 0.4, softcap, window)
    weights = {3: 4.0, 7: 4.0, 11: 4.0, 15: 4.0, 17: 1.0, 18: 1.0, 19: 1.0}
    received = ReceivedAttention((4,), 20)
    for a in range(0, 20, 7):  # the driver's chunks (7 is not a multiple of the band)
        b = min(a + 7, 20)
        out = received.observe(0, q[None, :, a:b], k[None, :, :b], v[None, :, :b], None,
                               {"scaling": 0.4, "softcap": softcap, "sliding_window": window}, a, True)
        assert out is None  # not an SDPA model: the model attends itself, bits unchanged
    sums = received.finish({0: k})[4][0]
    torch.testing.assert_close(sums.double(), estimate_ref(probs, weights, 4), atol=1e-5, rtol=0)
    # stride 1 (every query, weight 1) makes the estimate the exact sums
    ones = {p: 1.0 for p in range(20)}
    torch.testing.assert_close(estimate_ref(probs, ones, 4), probs.sum(dim=1), atol=1e-12, rtol=0)
    total = torch.zeros(HQ, 20)
    band_sums(q, k, ref_lse(q, k, 0, 0.4, softcap, window).float(), 0, total, 0.4, softcap, window)
    score_queries(q, k, torch.arange(20), torch.ones(20), total, 0.4, softcap, window,
                  ref_lse(q, k, 0, 0.4, softcap, window).float())
    torch.testing.assert_close(total.double(), probs.sum(dim=1), atol=1e-5, rtol=0)


def test_flash_kernel_gives_sdpa_bits_and_the_log_sum_exp():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    class Module:
        num_key_value_groups, is_causal = HQ // HK, True

    q, k, v = tensors(6, 10, seed=5)
    for mask in (None, _mask(6, 10, 4)):
        start = 4 if mask is not None else 0
        kk, vv = (k, v) if mask is not None else (k[:, :6], v[:, :6])
        qq = q.transpose(0, 1).unsqueeze(0).transpose(1, 2)  # [1, Hq, n, D] as a strided view, like the models'
        out, lse = flash_with_lse(qq, kk[None], vv[None], mask, 0.3)
        ref, _ = sdpa_attention_forward(Module(), qq, kk[None], vv[None], mask, scaling=0.3)
        assert torch.equal(out, ref)  # the same kernel: the same bits
        torch.testing.assert_close(lse.double(), ref_lse(q, kk, start, 0.3), atol=1e-5, rtol=0)


def test_stride_one_scores_equal_the_fused_scores():
    q, k, v = tensors(12, 12, seed=2)
    fused, scored_only = torch.zeros(HQ, 12), torch.zeros(HQ, 12)
    attend_and_score(q, k, v, 0, fused, 0.3, None, 4)
    score_queries(q, k, torch.arange(12), torch.ones(12), scored_only, 0.3, None, 4)
    torch.testing.assert_close(fused, scored_only, atol=1e-6, rtol=0)


def _mask(n, s, q_start, bidirectional=False):
    qpos, kpos = torch.arange(q_start, q_start + n).view(-1, 1), torch.arange(s).view(1, -1)
    ok = (kpos <= qpos) | bidirectional
    return ok.view(1, 1, n, s)


@pytest.mark.parametrize("as_float", [False, True])
def test_observe_fuses_only_under_a_plain_causal_mask(as_float):
    q, k, v = tensors(6, 10, seed=3)
    _, probs = reference(q, k, v, 4, D**-0.5)
    for bidirectional in (False, True):
        mask = _mask(6, 10, 4, bidirectional)
        if as_float:  # eager models pass an additive mask
            mask = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
        received = ReceivedAttention((1,), 10)
        out = received.observe(0, q[None], k[None], v[None], mask, {}, 4, fusable=True)
        if bidirectional:  # not causal: the model must attend itself; scores are still the causal sums
            assert out is None
        else:
            torch.testing.assert_close(out[0].double(), reference(q, k, v, 4, D**-0.5)[0], atol=1e-5, rtol=0)
        sums = received.finish({0: k})[1][0]
        torch.testing.assert_close(sums[:, :10].double(), probs.sum(dim=1), atol=1e-5, rtol=0)
    assert ReceivedAttention((1,), 10).observe(0, q[None], k[None], v[None], None, {}, 4, fusable=False) is None
