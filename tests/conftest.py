"""Shared fixtures: tiny random Hugging Face causal LMs, built from config classes (no downloads).

``tiny_model(arch)`` returns a fresh, seeded, fp32, eval-mode model; every architecture uses
grouped-query attention (4 query heads sharing 2 KV heads). Building one takes milliseconds, so
each call builds a new model: a test may change it (``model.half()``, attention implementation)
without affecting others.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest
import torch

# Geometry shared by every tiny model: 2 layers, hidden 64, 4 query heads / 2 KV heads of dim 16.
COMMON = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    # Larger than the 0.02 default so logits are spread out and greedy argmax is not a coin toss.
    initializer_range=0.2,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)

# Architectures with a sliding window smaller than the test contexts.
SLIDING_ARCHS = ("mistral_swa", "gemma2", "gemma3")
ARCHS = ("llama", "mistral", "mistral_swa", "qwen2", "qwen3", "gemma2", "gemma3", "phi3")


def _config(arch: str):
    import transformers as tf

    if arch == "llama":
        return tf.LlamaConfig(**COMMON), tf.LlamaForCausalLM
    if arch == "mistral":
        return tf.MistralConfig(**COMMON, sliding_window=None), tf.MistralForCausalLM
    if arch == "mistral_swa":
        return tf.MistralConfig(**COMMON, sliding_window=16), tf.MistralForCausalLM
    if arch == "qwen2":
        return tf.Qwen2Config(**COMMON), tf.Qwen2ForCausalLM
    if arch == "qwen3":
        return tf.Qwen3Config(**COMMON, head_dim=16), tf.Qwen3ForCausalLM
    if arch == "gemma2":
        cfg = tf.Gemma2Config(
            **COMMON,
            head_dim=16,
            query_pre_attn_scalar=32,  # scaling 32**-0.5, not head_dim**-0.5: a distinct case
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention"],
            # Small enough that the cap really bends the scores of this random model.
            attn_logit_softcapping=10.0,
        )
        # Only eager attention applies the softcap (transformers' SDPA path silently drops it),
        # so a faithful Gemma2 runs eager, as the real checkpoints are meant to.
        cfg._attn_implementation = "eager"
        return cfg, tf.Gemma2ForCausalLM
    if arch == "gemma3":
        cfg = tf.Gemma3TextConfig(
            **COMMON,
            head_dim=16,
            query_pre_attn_scalar=32,  # scaling 32**-0.5, not head_dim**-0.5: a distinct case
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention"],
        )
        return cfg, tf.Gemma3ForCausalLM
    if arch == "phi3":
        return tf.Phi3Config(**COMMON), tf.Phi3ForCausalLM
    raise ValueError(f"unknown tiny arch {arch!r}; one of {ARCHS}")


def build_tiny_model(arch: str, seed: int = 0, attn_implementation: str | None = None, **overrides):
    """A tiny random causal LM of ``arch`` (see ``ARCHS``), fp32, eval mode, seeded.

    ``overrides`` set config attributes after construction (e.g. ``head_dim=64``).
    """
    config, cls = _config(arch)
    for key, value in overrides.items():
        setattr(config, key, value)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = cls(config).to(torch.float32).eval()
    return model


@pytest.fixture(scope="session")  # a stateless factory: session scope lets module fixtures build once
def tiny_model():
    """Factory fixture: ``tiny_model("llama")`` -> a fresh tiny model (see ``build_tiny_model``)."""
    return build_tiny_model


def random_ids(n: int, seed: int = 0, vocab: int = 128, low: int = 3) -> torch.Tensor:
    """``n`` random token ids in ``[low, vocab)`` (skipping pad/bos/eos), 1-D int64."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, vocab, (n,), generator=g)


@pytest.fixture(scope="session")
def make_ids():
    """Factory fixture: ``make_ids(n, seed=0)`` -> 1-D random token ids for the tiny models."""
    return random_ids


@pytest.fixture(scope="session")
def smollm2():
    """The bundled SmolLM2-135M-Instruct ``(model, tokenizer)``, loaded once per session (~30 s); skips
    when its package is not installed."""
    from kvstack.errors import ModelNotInstalledError
    from kvstack.zoo import load

    try:
        return load("smollm2-135m")
    except ModelNotInstalledError as exc:  # pragma: no cover - `make` installs it
        pytest.skip(str(exc))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A private redis-server (Debian's package), killed at the end of the session."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server); the Redis store is untested")
    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--save", "",
         "--appendonly", "no", "--protected-mode", "yes"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("redis-server did not start within 10 s")
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)
