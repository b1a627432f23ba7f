"""Content addresses of caches: ``<model fingerprint>/<sha256 of the token prefix>``.

Two agents that run the same model on the same prefix compute the same key without talking
to each other. Keys are checked against a strict pattern before they touch a store, so a
key can never name a path outside the store's directory (no ``..``, no slashes of its own).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kvstack.errors import InputError

_FINGERPRINT = re.compile(r"^[0-9a-f]{8,64}$")
_PREFIX = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, order=True)
class CacheKey:
    fingerprint: str
    prefix: str

    def __post_init__(self) -> None:
        if not isinstance(self.fingerprint, str) or not _FINGERPRINT.match(self.fingerprint):
            raise InputError(
                f"model fingerprint {self.fingerprint!r} is not 8-64 lowercase hex digits; caches built with "
                "kvstack.compress carry one (KVCache.model_fingerprint)"
            )
        if not isinstance(self.prefix, str) or not _PREFIX.match(self.prefix):
            raise InputError(
                f"prefix hash {self.prefix!r} is not 64 lowercase hex digits; compute it with "
                "kvstack.wire.prefix_hash(token_ids)"
            )

    @classmethod
    def parse(cls, text: str) -> CacheKey:
        """``"<fingerprint>/<prefix>"`` -> CacheKey (InputError with the expected form)."""
        if not isinstance(text, str) or text.count("/") != 1:
            raise InputError(f"cache key {text!r} must look like <fingerprint>/<sha256 of the token ids>")
        fingerprint, prefix = text.split("/")
        return cls(fingerprint, prefix)

    def __str__(self) -> str:
        return f"{self.fingerprint}/{self.prefix}"
