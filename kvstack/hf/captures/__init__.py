"""Capture providers: what the prefill driver collects for the stages that asked, one module per capability.

The registry is :mod:`~kvstack.hf.captures.registry`; the built-in providers are listed here,
explicitly, and registered when this package is imported:

* ``token_nll`` (:mod:`~kvstack.hf.captures.token_nll`): each context token's surprisal, from the prefill's logits;
* ``local_nll`` (:mod:`~kvstack.hf.captures.local_nll`): surprisal under a short window (an extra pass);
* ``rope`` (:mod:`~kvstack.hf.captures.rope`): the model's rotary tables, for pre-RoPE stages;
* ``o_proj`` (:mod:`~kvstack.hf.captures.oproj`): each query head's output-projection rows (CriticalKV);
* ``kvzip`` (:mod:`~kvstack.hf.captures.reconstruction`): the context-reconstruction pass (KVzip).

The attention statistics (``attention``, ``window_queries``, ``question_queries``) are not providers:
the attention hook (:mod:`kvstack.hf.attention`) collects them inside the model's own attention calls.
"""

from __future__ import annotations

from kvstack.hf.captures.local_nll import PROVIDER as _LOCAL_NLL
from kvstack.hf.captures.oproj import PROVIDER as _OPROJ
from kvstack.hf.captures.reconstruction import PROVIDER as _KVZIP
from kvstack.hf.captures.registry import (
    CaptureInputs,
    CaptureProvider,
    ChunkObserver,
    provided,
    providers_for,
    register_provider,
    unregister_provider,
)
from kvstack.hf.captures.rope import PROVIDER as _ROPE
from kvstack.hf.captures.token_nll import PROVIDER as _TOKEN_NLL

BUILTIN = (_TOKEN_NLL, _LOCAL_NLL, _ROPE, _OPROJ, _KVZIP)
for _provider in BUILTIN:
    register_provider(_provider)

__all__ = [
    "BUILTIN", "CaptureInputs", "CaptureProvider", "ChunkObserver", "provided", "providers_for", "register_provider",
    "unregister_provider",
]
