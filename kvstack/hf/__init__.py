"""The only package that knows transformers: model facts, attention hook, cache, prefill."""

from kvstack.hf.attention import enable
from kvstack.hf.cache import CompressedCache
from kvstack.hf.model import ModelInfo, model_info

__all__ = ["CompressedCache", "ModelInfo", "enable", "model_info"]
