"""The real pretrained SmolLM2-135M-Instruct (GGUF inside the PyPI package), on a real essay.

Kept short: one model load for the module, a few hundred context tokens.
"""

import pytest
import torch

import kvstack
from kvstack.errors import InputError


@pytest.fixture(scope="module")
def smol(smollm2):
    return smollm2  # the session-wide load from tests/conftest.py


@pytest.fixture(scope="module")
def prompt(smol):
    from kvstack.eval.texts import essay
    from kvstack.prompting import split_prompt

    _, tok = smol
    from kvstack.cli import DEFAULT_QUESTION

    return split_prompt(tok, essay("foundervisa"), DEFAULT_QUESTION)


def test_identity_cache_generates_exactly_what_the_model_does(smol, prompt):
    model, _ = smol
    ctx, q = prompt
    cache = kvstack.compress(model, ctx, "identity")
    ours = kvstack.generate(model, cache, q, max_new_tokens=8)
    full = torch.cat([ctx, q])[None]
    ref = model.generate(full, attention_mask=torch.ones_like(full), max_new_tokens=8, do_sample=False,
                         temperature=None, top_p=None, top_k=None)[0, full.shape[1]:]
    assert torch.equal(ours, ref)


def test_int8_cache_keeps_the_answer_and_halves_fp16_bytes(smol, prompt):
    model, tok = smol
    ctx, q = prompt
    full = kvstack.compress(model, ctx, "identity")
    small = kvstack.compress(model, ctx, "int8")
    # fp32 model: int8 codes + one fp16 scale per 64 channels = 4 / (1 + 2/64) smaller
    assert small.dense_nbytes / small.nbytes == pytest.approx(4 / (1 + 2 / 64), rel=1e-9)
    a = tok.decode(kvstack.generate(model, full, q, max_new_tokens=12), skip_special_tokens=True)
    b = tok.decode(kvstack.generate(model, small, q, max_new_tokens=12), skip_special_tokens=True)
    assert "10,000" in a and "10,000" in b


def test_cache_is_reusable_for_several_questions(smol, prompt):
    model, tok = smol
    ctx, q = prompt
    cache = kvstack.compress(model, ctx, "int8")
    before = cache.nbytes
    first = kvstack.generate(model, cache, q, max_new_tokens=6)
    kvstack.generate(model, cache, q[:3], max_new_tokens=6)
    assert torch.equal(kvstack.generate(model, cache, q, max_new_tokens=6), first)
    assert cache.nbytes == before


def test_empty_context_is_an_input_error(smol):
    model, _ = smol
    with pytest.raises(InputError, match="empty"):
        kvstack.compress(model, torch.tensor([], dtype=torch.long), "int8")


def test_gguf_loads_as_the_same_dense_model_under_every_release(smol):
    # transformers 5.17+ could keep GGUF weights packed (kvstack.hf.compat.gguf_load_kwargs asks for
    # dense ones); the fingerprint, read under 5.2.0 and 5.25.0 alike, lets caches move between them
    from kvstack.hf.model import model_info

    model, _ = smol
    assert all(type(m) is torch.nn.Linear for m in (model.model.layers[0].self_attn.o_proj, model.lm_head))
    assert next(model.parameters()).dtype == torch.float32
    assert model_info(model).fingerprint == "e9fbe5825a8ef60b"


def test_batched_generate_answers_three_documents_as_the_single_calls_do(smol):
    """Three essays of different lengths, three questions, one batched generate: each answer is the
    one-sequence call's, token for token (fp32 greedy), from caches kept ragged (no padding stored)."""
    from kvstack.eval.texts import essay
    from kvstack.prompting import split_prompt

    model, tok = smol
    docs = [("foundervisa", 700), ("aord", 350), ("founders", 520)]
    questions = ["What is the essay about?", "Who wrote this?", "Summarize the first point."]
    pairs = [split_prompt(tok, essay(name)[:chars], q) for (name, chars), q in zip(docs, questions, strict=True)]
    ctxs, qs = [c for c, _ in pairs], [q for _, q in pairs]
    assert len({c.numel() for c in ctxs}) == 3
    batch = kvstack.compress(model, ctxs, "snapkv:0.5 > int8")
    assert batch.nbytes == sum(c.nbytes for c in batch)
    got = kvstack.generate(model, batch, qs, max_new_tokens=8)
    want = [kvstack.generate(model, batch[i], qs[i], max_new_tokens=8) for i in range(3)]
    assert [g.tolist() for g in got] == [w.tolist() for w in want]
