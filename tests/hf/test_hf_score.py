"""Teacher-forced scoring through a compressed cache equals a plain full-context forward."""

import torch

import kvstack
from kvstack.hf.model import model_info
from kvstack.hf.prefill import prefill
from kvstack.hf.score import continuation_logprobs, kl_to, nll


def test_identity_scoring_equals_full_forward(tiny_model, make_ids):
    model = tiny_model("qwen3")
    ctx, cont = make_ids(30), make_ids(10, seed=7)
    pre = prefill(model, model_info(model), ctx)
    lp = continuation_logprobs(model, pre.cache, cont, first_logits=pre.last_logits)
    with torch.no_grad():
        full = model(torch.cat([ctx, cont])[None]).logits[0, 29:-1].float().log_softmax(-1)
    torch.testing.assert_close(lp, full, atol=1e-5, rtol=0)
    ref = -full.gather(1, cont.view(-1, 1)).mean()
    assert abs(nll(lp, cont) - float(ref)) < 1e-6
    assert kl_to(full, lp) < 1e-6


def test_compression_raises_kl_and_more_bits_raise_it_less(tiny_model, make_ids):
    model = tiny_model("llama")
    ctx, cont = make_ids(40), make_ids(12, seed=8)
    full = continuation_logprobs(model, kvstack.compress(model, ctx, "identity"), cont)
    kls = [kl_to(full, continuation_logprobs(model, kvstack.compress(model, ctx, r), cont))
           for r in ("int8", "int4", "int2")]
    assert 0 < kls[0] < kls[1] < kls[2]
