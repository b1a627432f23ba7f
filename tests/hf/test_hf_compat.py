"""kvstack.hf.compat: the shims answer what the installed transformers asks, and what kvstack
derives from a model (its fingerprint) is the same under every supported release.

CI runs this file on both ends of the range (``make test`` and ``make test-oldest``), so each
assertion is checked against the oldest and the newest transformers.
"""

from __future__ import annotations

import inspect

import pytest
import torch
import transformers

import kvstack
from kvstack.hf import CompressedCache
from kvstack.hf.compat import CACHE_ARG, cache_kwargs, gguf_load_kwargs, mask_query_length, portable_config
from kvstack.hf.model import model_info

# model_info(...).fingerprint of each tiny model (tests/conftest.py), read under transformers 5.2.0
# and 5.25.0 alike: a cache saved, or served, under one release is accepted under another.
FINGERPRINTS = {
    "llama": "69c6797fbba72db4",
    "mistral": "d1b4acf64f4fee26",
    "mistral_swa": "082ce41bdae94162",
    "qwen2": "c29e3ee4b2714a59",
    "qwen3": "de51a61a5f28a0ac",
    "gemma2": "d7eae34649148c09",
    "gemma3": "4514a17595fa187a",
    "phi3": "d53da60380b89af1",  # 5.2 serialises its config differently (portable_config)
}


@pytest.mark.parametrize("arch", sorted(FINGERPRINTS))
def test_fingerprint_is_the_same_under_every_release(tiny_model, arch):
    assert model_info(tiny_model(arch)).fingerprint == FINGERPRINTS[arch], transformers.__version__


def test_portable_config_drops_only_what_some_releases_write():
    as_52 = {"partial_rotary_factor": 0.5, "ignore_keys_at_rope_validation": None, "hidden_size": 64,
             "rope_parameters": {"partial_rotary_factor": 0.5, "rope_theta": 1e4}}
    assert portable_config(as_52) == {"hidden_size": 64, "rope_parameters": as_52["rope_parameters"]}
    # a top-level value that disagrees with rope_parameters is a real difference: kept
    assert "partial_rotary_factor" in portable_config({**as_52, "partial_rotary_factor": 1.0})
    gguf = {"hidden_size": 64, "quantization_config": {"quant_method": "gguf", "dequantize": True}}
    assert portable_config(gguf) == {"hidden_size": 64}
    bnb = {"hidden_size": 64, "quantization_config": {"quant_method": "bitsandbytes"}}
    assert portable_config(bnb) == bnb  # another model's numbers: still part of the fingerprint


def test_cache_argument_is_the_one_the_model_takes(tiny_model, make_ids):
    model = tiny_model("llama")
    assert CACHE_ARG in inspect.signature(model.forward).parameters
    kv = kvstack.compress(model, make_ids(12), "identity")
    hf = CompressedCache(kv, torch.float32)
    model(input_ids=make_ids(2, seed=1).view(1, -1), **cache_kwargs(hf), use_cache=True)
    assert hf.get_seq_length() == 14  # the model wrote into the cache it was given, under that name


def test_compressed_layer_answers_both_names_of_its_maximum_length(tiny_model, make_ids):
    kv = kvstack.compress(tiny_model("gemma2"), make_ids(20), "identity")  # layer 0 slides (8), layer 1 is global
    sliding, full = CompressedCache(kv, torch.float32).layers
    assert (sliding.get_max_length(), full.get_max_length()) == (8, -1)  # 5.13+
    assert (sliding.get_max_cache_shape(), full.get_max_cache_shape()) == (8, -1)  # 5.2-5.12


def test_mask_sizes_take_a_query_length_or_cache_positions(tiny_model, make_ids):
    kv = kvstack.compress(tiny_model("llama"), make_ids(12), "streaming:sink=2,window=4")
    layer = CompressedCache(kv, torch.float32).layers[0]
    assert mask_query_length(torch.arange(12, 15)) == mask_query_length(3) == 3
    # 6 rows kept of 12 tokens: 6 stored + 3 new, and the mask starts 6 positions in
    assert layer.get_mask_sizes(3) == layer.get_mask_sizes(torch.arange(12, 15)) == (9, 6)


def test_gguf_loads_ask_for_dense_weights():
    kwargs = gguf_load_kwargs("model.gguf")
    assert kwargs["gguf_file"] == "model.gguf"
    config = kwargs.get("quantization_config")
    if hasattr(transformers, "GgufConfig"):  # 5.17+: packed GGUF weights exist, and are refused
        assert config is not None and config.dequantize is True
    else:
        assert config is None
