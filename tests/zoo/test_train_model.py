"""The training model computes exactly what transformers' LlamaForCausalLM computes with its weights."""

from __future__ import annotations

import pytest
import torch

from training.model import LlamaShape, TrainLlama, parameter_count

SMALL = LlamaShape(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
                   num_key_value_heads=2, max_position_embeddings=256, rope_theta=10_000.0)


def test_logits_equal_transformers_llama_in_float64():
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    ours = TrainLlama(SMALL, init_std=0.2).double().eval()
    ref = LlamaForCausalLM(SMALL.hf_config()).double().eval()
    missing, unexpected = ref.load_state_dict(ours.hf_state_dict(torch.float64), strict=False)
    assert missing == ["lm_head.weight"] and unexpected == []  # the head is tied to the embedding
    ids = torch.randint(0, SMALL.vocab_size, (2, 70))
    with torch.no_grad():
        a = ours.logits(ours(ids))
        b = ref(ids).logits
    assert a.abs().max() > 1  # not a trivially flat output
    assert (a - b).abs().max() / b.abs().max() < 1e-12


def test_parameter_count_matches_the_module_and_the_shipped_shape_fits_40_mb_in_fp16():
    assert parameter_count(SMALL) == sum(p.numel() for p in TrainLlama(SMALL).parameters())
    shipped = LlamaShape()
    assert shipped.num_attention_heads // shipped.num_key_value_heads == 4
    assert 2 * parameter_count(shipped) < 40_000_000 - 1_000_000  # room left for the tokenizer files


def test_causal_attention_ignores_the_future():
    torch.manual_seed(1)
    m = TrainLlama(SMALL).double().eval()
    ids = torch.randint(0, SMALL.vocab_size, (1, 40))
    other = ids.clone()
    other[0, 30:] = (other[0, 30:] + 1) % SMALL.vocab_size
    with torch.no_grad():
        assert torch.equal(m(ids)[0, :30], m(other)[0, :30])
        assert not torch.allclose(m(ids)[0, 30:], m(other)[0, 30:])


@pytest.mark.parametrize("theta", [10_000.0, 500_000.0])
def test_hf_config_carries_the_rope_base(theta):
    cfg = LlamaShape(rope_theta=theta).hf_config()
    assert cfg.rope_parameters["rope_theta"] == theta and cfg.head_dim == 64
