"""kvstack: compress the KV cache of any Hugging Face causal LM by stacking techniques.

    import kvstack
    cache = kvstack.compress(model, context_ids, recipe="streaming:sink=4,window=512 > int8")
    cache.nbytes, cache.dense_nbytes
    out_ids = kvstack.generate(model, cache, question_ids, max_new_tokens=32)
    batch = kvstack.compress(model, [ids_1, ids_2], recipe="int8")     # a KVBatch, ragged
    outs = kvstack.generate(model, batch, [q_1, q_2], max_new_tokens=32)  # one batched generate
"""

from __future__ import annotations

from typing import Any

from kvstack import errors

__version__ = "0.1.0"
__all__ = [
    "KVBatch", "KVCache", "KVLayer", "Recipe", "compress", "compress_many", "errors", "generate", "load",
    "parse_recipe", "save",
]

_LAZY = {
    "compress": ("kvstack.api", "compress"),
    "generate": ("kvstack.api", "generate"),
    "KVCache": ("kvstack.kv", "KVCache"),
    "KVLayer": ("kvstack.kv", "KVLayer"),
    "KVBatch": ("kvstack.kv_batch", "KVBatch"),
    "Recipe": ("kvstack.stack", "Recipe"),
    "compress_many": ("kvstack.api", "compress_many"),
    "save": ("kvstack.wire", "save"),
    "load": ("kvstack.wire", "load"),
}


def parse_recipe(text: str):
    """Parse a recipe string into a :class:`Recipe` (raises RecipeError listing stages)."""
    from kvstack.stack import Recipe

    return Recipe.parse(text)


def __getattr__(name: str) -> Any:
    # torch and transformers load only when a compression API is used (`kvstack plan` stays fast).
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'kvstack' has no attribute {name!r}")
