"""The shipped kvstack-retrieval model: loads offline as a Llama, fits the size cap, and retrieves.

The retrieval check is the real path a user takes: text -> ``split_prompt`` -> ``kvstack.compress``
with a full cache -> ``kvstack.generate``, on essays and sentence frames the model never saw.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kvstack
from kvstack.zoo import SHIPPED, load, path


@pytest.fixture(scope="module")
def retrieval():
    return load("kvstack-retrieval")


def test_shipped_model_is_a_gqa_llama_with_an_8k_context(retrieval):
    model, tok = retrieval
    cfg = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert cfg.num_attention_heads // cfg.num_key_value_heads >= 4
    assert 6 <= cfg.num_hidden_layers <= 12
    assert cfg.max_position_embeddings >= 8192
    assert next(model.parameters()).dtype == torch.float32  # stored fp16, computed fp32 on the CPU
    assert path("kvstack-retrieval") == SHIPPED / "kvstack-retrieval"


def test_shipped_files_fit_in_40_megabytes():
    total = sum(p.stat().st_size for p in (SHIPPED / "kvstack-retrieval").rglob("*") if p.is_file())
    assert total <= 40_000_000, f"{total:,} bytes"


def test_tokenizer_round_trips_text_exactly(retrieval):
    _, tok = retrieval
    for text in ["Plain words.", "  indented\n\tcode = {'a': [1, 2]}  # note\n", "Zürich, naïve café, 東京, emoji 🙂",
                 "digits 0123456789 and 3.14159"]:
        ids = tok(text, add_special_tokens=False).input_ids
        assert tok.decode(ids) == text
    assert tok("12345", add_special_tokens=False).input_ids == [tok.convert_tokens_to_ids(c) for c in "12345"]


def test_answers_unseen_needle_questions_with_a_full_cache(retrieval, vocab, essay_stream):
    """5 single-fact questions at ~700 tokens, held-out frames/questions/names and held-out essays.

    A model that cannot retrieve gets about 0: answers are random 3-9 digit numbers, random codes, or one of
    7 held-out words (a blind guess among those is right 1 time in 7, and only for word answers).
    """
    from kvstack.prompting import split_prompt
    from training.retrieval import SampleMaker

    model, tok = retrieval
    maker = SampleMaker(vocab, essay_stream)
    rng = np.random.default_rng(2024)
    hits = []
    for _ in range(5):
        s = maker.make("single", 700, rng, split="heldout", qa_format=("\n\nQuestion: ", "\nAnswer:"), bos=False)
        question, answer, _ = s.qas[0]
        context = tok.decode(s.ids[: s.context_len].tolist())
        ctx, q = split_prompt(tok, context, question)
        expected = torch.as_tensor(s.ids[: s.context_len], dtype=torch.long)
        assert torch.equal(ctx, expected)  # the prompt helper gives exactly the ids the sample was built from
        ctx = torch.cat([torch.tensor([tok.bos_token_id]), ctx])  # as the evaluation harness feeds base models
        cache = kvstack.compress(model, ctx, "identity")
        out = tok.decode(kvstack.generate(model, cache, q, max_new_tokens=12), skip_special_tokens=True)
        hits.append(answer in out)
    print(f"kvstack-retrieval answered {sum(hits)} of {len(hits)} held-out questions")
    assert sum(hits) >= 2, hits
