"""Helpers shared by the wire tests (imported by file name, like tests/hf/hf_reference.py)."""

from __future__ import annotations

import torch

RECIPES = (
    "identity",
    "int8",
    "int4",
    "int4:sym,g8",
    "int3:g16",
    "int2:axis=channel,g8",
    "int4:axis=channel,g4,sym",
    "kivi:2,g8,residual=6",
    "kivi:4,g8,residual=6",
    "streaming:sink=2,window=12,decode=true > int4",
    "snapkv:0.5,window=8,alloc=adakv > int3:axis=channel,g4",
    "random:0.4,seed=3 > kivi:2,g4,residual=3",
    "int2:g8,rot,clip=0.7",
    "int4:axis=channel,g4,rot,seed=5",
)


def tiny_llama(seed: int = 0):
    """The same geometry as tests/conftest.py's tiny models: 2 layers, 2 KV heads of dim 16."""
    import transformers as tf

    config = tf.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2, bos_token_id=1,
        eos_token_id=2, pad_token_id=0,
    )
    torch.manual_seed(seed)
    return tf.LlamaForCausalLM(config).to(torch.float32).eval()
