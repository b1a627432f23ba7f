"""Fixtures for the evaluation tests: a real BPE tokenizer trained here on the essays (no
downloads) and a tiny random Llama saved with it as a Hugging Face model directory."""

from __future__ import annotations

import pytest
import torch


def _train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from kvstack.eval.tasks import vocab
    from kvstack.eval.tasks.haystack import _source_text

    text = _source_text("haystack")[:150_000]
    extra = " ".join(vocab.TEMPLATES) + " " + " ".join(vocab.CWE_WORDS) + " 0123456789"
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text[i : i + 2000] for i in range(0, len(text), 2000)] + [extra], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="session")
def bpe_tokenizer():
    """A byte-level BPE (600 tokens) trained on the haystack essays: real offsets, real lengths."""
    return _train_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, bpe_tokenizer):
    """A tiny random Llama + the BPE tokenizer, saved as an HF directory (what `--model DIR` takes)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    d = tmp_path_factory.mktemp("tiny-eval-llama")
    bpe_tokenizer.save_pretrained(d)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(bpe_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      bos_token_id=1, eos_token_id=2, initializer_range=0.2)
    LlamaForCausalLM(cfg).save_pretrained(d)
    return d
