"""Which model a cache belongs to: its config's fingerprint (default) or config *and* weights.

The config fingerprint (16 hex digits, ``model_info(model).fingerprint``) covers what shapes
the cache - geometry, RoPE, vocabulary - so a fine-tune of a model shares it and would accept
the base model's caches, whose keys and values it did not compute. ``fingerprint="weights"``
(32 hex digits) hashes the parameters too: a cache compressed that way is checked against the
weights wherever it is loaded or used (``load``, ``generate``, ``Client.pull``), and a cache
server keys it apart from the config-only caches. Hashing reads every parameter once per
model (SmolLM2-135M: about a second on a CPU) and is remembered until a parameter changes.
"""

from __future__ import annotations

import hashlib

import torch

from kvstack.errors import InputError, ModelError

KINDS = ("config", "weights")
WEIGHTS_HEX = 32  # the length that tells a weights fingerprint from a config one (16)


def check_kind(kind: str) -> None:
    """InputError unless ``kind`` is a fingerprint kind (``KINDS``): checked before any file is read."""
    if kind not in KINDS:
        raise InputError(f"fingerprint={kind!r}: pick 'config' (shapes and RoPE) or 'weights' (also the parameters)")


def weights_hash(model) -> str:
    """SHA-256 (hex) over every parameter's name, dtype, shape and bytes, in name order."""
    params = sorted(model.named_parameters(), key=lambda item: item[0])
    stamp = tuple((p.data_ptr(), p._version) for _, p in params)
    cached = getattr(model, "_kvstack_weights_hash", None)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in params:
            h.update(f"{name}:{p.dtype}:{tuple(p.shape)};".encode())
            flat = p.detach().reshape(-1)
            for start in range(0, flat.numel(), 1 << 24):  # bounded copies of large matrices
                h.update(flat[start : start + (1 << 24)].cpu().contiguous().view(torch.uint8).numpy().tobytes())
    digest = h.hexdigest()
    try:
        object.__setattr__(model, "_kvstack_weights_hash", (stamp, digest))
    except (AttributeError, TypeError):
        pass
    return digest


def model_fingerprint(model, kind: str = "config") -> str:
    """The fingerprint a cache of ``model`` carries under ``kind``."""
    from kvstack.hf.model import model_info

    check_kind(kind)
    config = model_info(model).fingerprint
    if kind == "config":
        return config
    return hashlib.sha256(f"{config}:{weights_hash(model)}".encode()).hexdigest()[:WEIGHTS_HEX]


def is_weights(fingerprint: str) -> bool:
    return isinstance(fingerprint, str) and len(fingerprint) == WEIGHTS_HEX


def expected_for(model, cache_fingerprint: str, kind: str = "config") -> str:
    """What ``cache_fingerprint`` must equal for ``model``: a weights fingerprint is always checked
    against the weights; ``kind="weights"`` also refuses a cache that carries only the config's."""
    check_kind(kind)
    if is_weights(cache_fingerprint):
        return model_fingerprint(model, "weights")
    if kind == "weights":
        raise ModelError(
            f"this cache carries only its model's config fingerprint ({cache_fingerprint or 'none'}), which a "
            "fine-tune of the same model shares, so its weights cannot be checked; compress it with "
            "kvstack.compress(..., fingerprint='weights'), or load with fingerprint='config'"
        )
    return model_fingerprint(model, "config")
