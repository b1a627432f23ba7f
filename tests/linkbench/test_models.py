"""``random:<preset>`` models: the spec grammar, the exact Llama-3.1-8B shape, seeded weights, and errors."""

from __future__ import annotations

import pytest
import torch
import transformers

from kvstack.errors import InputError
from kvstack.linkbench.models import (
    RandomModel,
    build_random,
    check_device,
    load_bench_model,
    parse_random,
    random_config,
    random_prompt,
)

TINY = "random:llama-3.1-8b,num_hidden_layers=2,hidden_size=64,intermediate_size=96,num_attention_heads=4," \
       "num_key_value_heads=2,vocab_size=300"


def test_spec_grammar():
    spec = parse_random("random:Llama-3.1-8B, num_hidden_layers=2,rope_theta=1e4,tie_word_embeddings=true")
    assert spec == RandomModel("llama-3.1-8b", {"num_hidden_layers": 2, "rope_theta": 1e4, "tie_word_embeddings": True})
    assert isinstance(spec.overrides["num_hidden_layers"], int)
    assert parse_random("random:meta-llama/Llama-3.1-8B").preset == "llama-3.1-8b"  # the Hub id of a preset


def test_llama_31_8b_shape_is_exact():
    config = random_config(parse_random("random:llama-3.1-8b"))
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (4096, 14336, 32)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (32, 8, 128)
    assert (config.vocab_size, config.tie_word_embeddings) == (128256, False)
    assert config.rope_parameters["rope_theta"] == 500000.0
    with torch.device("meta"):  # shapes only: the published parameter count, to the unit
        model = transformers.AutoModelForCausalLM.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == 8_030_261_248


def test_overrides_reach_derived_fields():
    config = random_config(parse_random(TINY))
    assert config.head_dim == 16  # 64 / 4, not the preset's 128


def test_tiny_model_parameters_and_seeded_weights():
    model = build_random(parse_random(TINY), "cpu", seed=1)
    # by hand: embeddings and head 2*300*64; per layer q,o 64x64, k,v 64x32, mlp 3*64x96, two norms; final norm
    per_layer = 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 96 + 2 * 64
    assert sum(p.numel() for p in model.parameters()) == 2 * 300 * 64 + 2 * per_layer + 64
    assert next(model.parameters()).dtype == torch.float32 and not model.training
    again = build_random(parse_random(TINY), "cpu", seed=1)
    other = build_random(parse_random(TINY), "cpu", seed=2)
    w = model.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(w, again.model.layers[0].self_attn.q_proj.weight)
    assert not torch.equal(w, other.model.layers[0].self_attn.q_proj.weight)
    model_b, tok = load_bench_model(TINY, "cpu", seed=1)
    assert tok is None and torch.equal(w, model_b.model.layers[0].self_attn.q_proj.weight)


def test_random_prompt():
    p = random_prompt(300, 100, 7, seed=3)
    assert p.context_ids.shape == (100,) and p.question_ids.shape == (7,)
    ids = torch.cat([p.context_ids, p.question_ids])
    assert int(ids.min()) >= 3 and int(ids.max()) < 300
    assert torch.equal(random_prompt(300, 100, 7, seed=3).context_ids, p.context_ids)
    assert not torch.equal(random_prompt(300, 100, 7, seed=4).context_ids, p.context_ids)


@pytest.mark.parametrize("name, match", [
    ("llama-3.1-8b", "random:<preset>"),
    ("random:llama-9000", "no such preset.*llama-3.1-8b"),
    ("random:llama-3.1-8b,layers", "field=value"),
    ("random:llama-3.1-8b,Bad-Key=2", "field=value"),
    ("random:llama-3.1-8b,num_hidden_layers=two", "not a number"),
])
def test_bad_specs_are_input_errors(name, match):
    with pytest.raises(InputError, match=match):
        parse_random(name)


def test_unknown_field_and_bad_prompt_are_input_errors():
    with pytest.raises(InputError, match="no field num_layerz"):
        random_config(parse_random("random:llama-3.1-8b,num_layerz=2"))
    with pytest.raises(InputError, match="at least 1"):
        random_prompt(300, 0, 4)
    with pytest.raises(InputError, match="too small"):
        random_prompt(3, 10, 4)


def test_bad_devices_are_input_errors():
    with pytest.raises(InputError, match="cpu, cuda"):
        check_device("tpu")
    with pytest.raises(InputError, match="cpu, cuda"):
        check_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device"):
            check_device("cuda")
