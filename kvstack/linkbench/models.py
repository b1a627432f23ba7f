"""Models for ``kvstack bench``: a zoo model, or ``random:<preset>`` - random weights in the shape of a
``kvstack plan`` preset, built directly on the device.

Time to first token does not depend on the weights' values, only on the shape, so an 8B-shaped model
needs no download: ``random:llama-3.1-8b`` builds Llama-3.1-8B's dimensions with random weights in
bf16 on the GPU. Config fields can be overridden (``random:llama-3.1-8b,num_hidden_layers=2,...``),
which is how tests get a tiny model of the same architecture. A random model has no tokenizer, so
its contexts are random token ids and no accuracy can be measured.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from kvstack.device import check_device
from kvstack.errors import InputError

PREFIX = "random:"
_FIELD = re.compile(r"[a-z_][a-z0-9_]*")


@dataclass(frozen=True)
class RandomModel:
    """A parsed ``random:<preset>[,field=value...]``."""

    preset: str
    overrides: dict[str, int | float | bool] = field(default_factory=dict)


def is_random(name: str) -> bool:
    return str(name).startswith(PREFIX)


def parse_random(name: str) -> RandomModel:
    """``random:llama-3.1-8b,num_hidden_layers=2`` -> :class:`RandomModel` (InputError saying the syntax)."""
    from kvstack.eval.peers.kvpress_bridge import scalar_value as parse_value
    from kvstack.plan.presets import find_preset, preset_names

    if not is_random(name):
        raise InputError(f"{name!r} is not a random model spec: write random:<preset>, e.g. random:llama-3.1-8b")
    head, *pairs = name[len(PREFIX):].split(",")
    found = find_preset(head.strip())
    if found is None:
        raise InputError(f"random:{head.strip()}: no such preset; presets: {', '.join(preset_names())}")
    overrides: dict[str, int | float | bool] = {}
    for pair in pairs:
        key, eq, text = pair.partition("=")
        key = key.strip()
        if not eq or not _FIELD.fullmatch(key):
            raise InputError(f"{name}: override {pair!r} must be field=value, e.g. num_hidden_layers=2")
        value = parse_value(text.strip())  # the kvpress bridge's key=value reading: bool, int, float
        if isinstance(value, str):
            raise InputError(f"{name}: {key}={value!r} is not a number (or true/false)")
        overrides[key] = value
    return RandomModel(found[0], overrides)


def random_config(spec: RandomModel):
    """The transformers config of the preset with the overrides applied (fields it lacks are errors)."""
    import transformers

    from kvstack.plan.presets import find_preset

    data = {k: v for k, v in find_preset(spec.preset)[1].items() if not k.startswith("_")}
    model_type = data.pop("model_type", None)
    data.pop("torch_dtype", None)  # the bench chooses the dtype for the device
    try:
        base = transformers.AutoConfig.for_model(model_type)
    except (ValueError, KeyError) as exc:
        raise InputError(f"random:{spec.preset}: transformers cannot build a {model_type!r} model ({exc})") from None
    unknown = sorted(k for k in spec.overrides if not hasattr(base, k))
    if unknown:
        raise InputError(f"random:{spec.preset}: {type(base).__name__} has no field {', '.join(unknown)} to override")
    # overrides go in before the config is built, so derived fields (head_dim) follow them
    return transformers.AutoConfig.for_model(model_type, **{**data, **spec.overrides})


def default_dtype(device: str) -> torch.dtype:
    """bf16 on a GPU (as the real checkpoints run), fp32 on the CPU (where bf16 matmuls are slow)."""
    return torch.float32 if torch.device(device).type == "cpu" else torch.bfloat16


def build_random(spec: RandomModel, device: str = "cpu", dtype: torch.dtype | None = None, seed: int = 0):
    """The model with random (seeded) weights, allocated directly on ``device`` in ``dtype``."""
    import transformers

    dev = check_device(device)
    config = random_config(spec)
    torch.manual_seed(seed)
    with torch.device(dev):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype or default_dtype(device))
    model.eval()
    model.generation_config.pad_token_id = 0
    return model


def load_bench_model(name: str, device: str = "cpu", seed: int = 0):
    """``(model, tokenizer)``: a random model (tokenizer None) or a zoo model / directory moved to ``device``."""
    if is_random(name):
        return build_random(parse_random(name), device, seed=seed), None
    from kvstack.eval.runner import load_model

    dev = check_device(device)
    model, tok = load_model(name)
    return (model if dev.type == "cpu" else model.to(dev)), tok


def random_prompt(vocab_size: int, tokens: int, question_tokens: int, seed: int = 0):
    """A context of ``tokens`` random ids and a question of ``question_tokens`` (ids 3.. so that the
    usual special ids 0-2 never appear): what a random model is timed on."""
    from kvstack.eval.prompt import Prompt

    if tokens < 1 or question_tokens < 1:
        raise InputError(f"random prompt of {tokens} + {question_tokens} tokens: both must be at least 1")
    if vocab_size <= 3:
        raise InputError(f"vocabulary of {vocab_size} ids is too small for a random prompt (needs more than 3)")
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab_size, (tokens + question_tokens,), generator=gen)
    return Prompt(context_ids=ids[:tokens], question_ids=ids[tokens:])
