"""Where transformers releases differ, in one place: each shim names the release it is for.

kvstack supports transformers 5.2 (what the kvpress peer venv pins) up to the newest
release CI tests (``requirements.txt``); ``requirements-oldest.txt`` pins the lower end
and ``make test-oldest`` runs the suite there. Everything else in kvstack calls the
helpers below instead of testing versions itself, so dropping an old release means
deleting its branch here and nothing else. Two differences need no code here: layers'
``update`` takes any extra arguments (5.2-5.3 pass ``cache_kwargs``, 5.4-5.23 nothing, 5.24+
``kwargs=``), and 5.21+ refuses SDPA for Gemma 2 (its test skips there, saying so).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
import transformers
from packaging.version import Version

TRANSFORMERS = Version(transformers.__version__).release  # (major, minor, patch), no pre/dev tags

# 5.24 renamed the cache argument of ``model(...)`` / ``model.generate`` from
# ``past_key_values`` to ``cache`` (the old name warns until its removal, announced for 5.40).
CACHE_ARG = "cache" if TRANSFORMERS >= (5, 24) else "past_key_values"


def cache_kwargs(cache) -> dict[str, Any]:
    """``{name: cache}`` for ``model(**...)`` or ``model.generate(**...)``, named as this transformers expects."""
    return {CACHE_ARG: cache}


@functools.lru_cache(maxsize=64)
def _takes_cache_position(cls: type) -> bool:
    return "cache_position" in inspect.signature(cls.forward).parameters


def position_kwargs(model, position_ids: torch.Tensor) -> dict[str, Any]:
    """``cache_position`` for a step whose ``position_ids`` are given, where the model still takes it.

    Releases whose models take ``cache_position`` (before 5.2x dropped it for positions derived from
    the cache) compute it from the cache length on the host when it is missing; a captured CUDA graph
    would freeze that value, so a step loop passes it as a tensor. Later releases need only ``position_ids``.
    """
    return {"cache_position": position_ids[0]} if _takes_cache_position(type(model)) else {}


def mask_query_length(arg: torch.Tensor | int) -> int:
    """Query tokens of the step, from what ``CacheLayerMixin.get_mask_sizes`` is given:
    the step's ``cache_position`` tensor in 5.2-5.3, the query length (an int) from 5.4."""
    return int(arg.shape[0]) if isinstance(arg, torch.Tensor) else int(arg)


class LayerProtocol:
    """Methods a cache layer must have under every supported release; mix in before
    ``CacheLayerMixin``. Subclasses implement :meth:`max_length` once."""

    def max_length(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    # 5.13 renamed ``get_max_cache_shape`` to ``get_max_length`` (abstract from 5.13;
    # the old name was dropped in 5.20). Both exist so either release finds its own.
    def get_max_length(self) -> int:
        return self.max_length()

    # 5.2-5.12: the abstract method under its old name.
    def get_max_cache_shape(self) -> int:
        return self.max_length()


def portable_config(items: dict[str, Any]) -> dict[str, Any]:
    """``config.to_dict()`` without what only some releases write, so a model's fingerprint (and a
    cache saved or served under it) is the same under every supported release.

    5.2-5.3 serialise ``ignore_keys_at_rope_validation`` and repeat RoPE settings at the top
    level beside ``rope_parameters`` (Phi-3's ``partial_rotary_factor``); 5.4 stopped both.
    """
    out = {k: v for k, v in items.items() if k != "ignore_keys_at_rope_validation"}
    # 5.17+ records a GGUF load as ``quantization_config`` (quant_method "gguf"); the weights kvstack
    # loads are dequantized (see gguf_load_kwargs), the same model as 5.2's loader made.
    if isinstance(out.get("quantization_config"), dict) and out["quantization_config"].get("quant_method") == "gguf":
        del out["quantization_config"]
    rope = out.get("rope_parameters")
    if isinstance(rope, dict):
        out = {k: v for k, v in out.items() if k == "rope_parameters" or k not in rope or rope[k] != v}
    return out


def gguf_load_kwargs(gguf_file: str) -> dict[str, Any]:
    """``from_pretrained`` arguments that load a GGUF file into plain dense ``Linear`` weights.

    5.17 added ``GgufConfig``: for the architectures its new loader knows, weights may stay packed
    in GGUF blocks behind a matmul kernel fetched from the hub; kvstack's zoo (and its stages that
    read ``o_proj``) wants the dense model that 5.2-5.16 always built, so it asks for it.
    """
    kwargs: dict[str, Any] = {"gguf_file": gguf_file}
    if TRANSFORMERS >= (5, 17):
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    return kwargs
