"""Bad input through the public API raises the typed error, with a message saying what to do."""

from __future__ import annotations

import pytest
import torch

import kvstack
from kvstack.errors import InputError, KvstackError, ModelError


def test_empty_context(tiny_model):
    model = tiny_model("llama")
    for empty in ([], torch.tensor([], dtype=torch.long), torch.zeros(1, 0, dtype=torch.long)):
        with pytest.raises(InputError, match="give at least one token"):
            kvstack.compress(model, empty, "identity")


def test_batch_of_two_contexts(tiny_model, make_ids):
    model = tiny_model("llama")
    batch = torch.stack([make_ids(10, seed=1), make_ids(10, seed=2)])
    with pytest.raises(InputError, match="pass a batch as a list of sequences"):
        kvstack.compress(model, batch, "identity")


def test_base_model_without_lm_head_is_refused(tiny_model, make_ids):
    import transformers as tf

    base = tf.LlamaModel(tiny_model("llama").config).eval()
    with pytest.raises(ModelError, match="AutoModelForCausalLM"):
        kvstack.compress(base, make_ids(10), "identity")


def test_non_causal_lm_is_refused(make_ids):
    import transformers as tf

    cfg = tf.BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64)
    bert = tf.BertForMaskedLM(cfg).eval()
    with pytest.raises(ModelError, match="ForCausalLM"):
        kvstack.compress(bert, make_ids(10), "identity")
    with pytest.raises(ModelError, match="not a Hugging Face model"):
        kvstack.compress(torch.nn.Linear(4, 4), make_ids(10), "identity")


def test_cache_from_another_model(tiny_model, make_ids):
    llama = tiny_model("llama")
    cache = kvstack.compress(llama, make_ids(20), "identity")
    for other in (tiny_model("qwen2"), tiny_model("llama", num_hidden_layers=3)):
        with pytest.raises(ModelError, match="compress the context again with this model"):
            kvstack.generate(other, cache, make_ids(3), max_new_tokens=2)
    # The same model is fine.
    assert kvstack.generate(llama, cache, make_ids(3), max_new_tokens=2).numel() >= 1


def test_streaming_window_beyond_the_context_keeps_everything(tiny_model, make_ids):
    model, ctx, q = tiny_model("llama"), make_ids(20), make_ids(3, seed=5)
    full = kvstack.compress(model, ctx, "identity")
    for recipe in ("streaming:sink=4,window=32", "streaming:sink=4,window=16"):  # 36 and exactly 20 kept
        cache = kvstack.compress(model, ctx, recipe)
        assert cache.tokens_kept == full.tokens_kept and cache.nbytes == full.nbytes
        assert "everything kept" in cache.stats["notes"][0]
        assert torch.equal(kvstack.generate(model, cache, q, max_new_tokens=4),
                           kvstack.generate(model, full, q, max_new_tokens=4))
    assert kvstack.compress(model, ctx, "streaming:sink=4,window=15").tokens_kept < full.tokens_kept


@pytest.mark.parametrize("bad", ["some text", b"bytes", ["a", "b"], {"input_ids": [1, 2]}, object()])
def test_text_or_other_non_ids_say_tokenize_first(tiny_model, make_ids, bad):
    model = tiny_model("llama")
    with pytest.raises(InputError, match=r"tokenize first, e\.g\. ids = tokenizer\(\"some text\""):
        kvstack.compress(model, bad, "identity")
    cache = kvstack.compress(model, make_ids(8), "identity")
    with pytest.raises(InputError, match="question_ids must be token ids"):
        kvstack.generate(model, cache, bad, max_new_tokens=2)


def test_errors_share_the_base_class(tiny_model):
    with pytest.raises(KvstackError):
        kvstack.compress(tiny_model("llama"), [], "identity")


def test_generate_input_checks(tiny_model, make_ids):
    model = tiny_model("llama")
    cache = kvstack.compress(model, make_ids(12), "identity")
    with pytest.raises(InputError, match="at least 1 token"):
        kvstack.generate(model, cache, make_ids(3), max_new_tokens=0)
    with pytest.raises(InputError, match="give at least one token"):
        kvstack.generate(model, cache, [], max_new_tokens=2)
    with pytest.raises(InputError, match="from kvstack.compress"):
        kvstack.generate(model, {"not": "a cache"}, make_ids(3), max_new_tokens=2)


def test_runtime_switches_do_not_change_the_model_fingerprint(tiny_model, make_ids):
    import kvstack

    model = tiny_model("llama")
    cache = kvstack.compress(model, make_ids(20), "identity")
    model.config.use_cache = False
    model.config.output_hidden_states = True
    try:
        out = kvstack.generate(model, cache, make_ids(3, seed=5), max_new_tokens=2)
    finally:
        model.config.use_cache = True
        model.config.output_hidden_states = False
    assert out.numel() == 2
