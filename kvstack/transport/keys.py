"""Content addresses of caches: ``<model fingerprint>/<sha256 of the token prefix>/<recipe id>``.

Two agents that run the same model on the same prefix compute the same key without talking to each
other. The recipe id (16 hex digits of the SHA-256 of the canonical recipe - every default written
out -, :func:`recipe_variant`) keeps two recipes' caches of one context apart: pushing
``snapkv:0.25 > int4`` after ``int8`` adds a cache instead of silently replacing it. A key without it
(``<fingerprint>/<prefix>``) still names the one cache of that context when there is one (and caches
stored before recipe ids existed). Keys are checked against a strict pattern before they touch a
store, so a key can never name a path outside the store's directory (no ``..``, no slashes of its
own).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from kvstack.errors import InputError

_FINGERPRINT = re.compile(r"^[0-9a-f]{8,64}$")
_PREFIX = re.compile(r"^[0-9a-f]{64}$")
_VARIANT = re.compile(r"^[0-9a-f]{16}$")


def recipe_variant(recipe: str) -> str:
    """The recipe id in a cache's key: 16 hex digits of the SHA-256 of what the recipe runs (its canonical text:
    ``int4`` and ``int4:g32,axis=channel`` name one cache, and an ``int4`` cache stored while int4 meant groups of
    64 is not found as today's ``int4``); text that does not parse (a stage of another version) is hashed as is."""
    from kvstack.grammar.syntax import canonical_or_none

    recipe = canonical_or_none(recipe) or recipe
    return hashlib.sha256(recipe.encode("utf-8", "surrogatepass")).hexdigest()[:16]


@dataclass(frozen=True, order=True)
class CacheKey:
    fingerprint: str
    prefix: str
    variant: str = ""  # recipe id, or "" for "the one cache of this context"

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

        if not isinstance(self.variant, str) or (self.variant and not _VARIANT.match(self.variant)):
            raise InputError(
                f"recipe id {self.variant!r} is not 16 lowercase hex digits; compute it with "
                "kvstack.transport.keys.recipe_variant(recipe)"
            )

    @classmethod
    def parse(cls, text: str) -> CacheKey:
        """``"<fingerprint>/<prefix>[/<recipe id>]"`` -> CacheKey (InputError with the expected form)."""
        if not isinstance(text, str) or text.count("/") not in (1, 2):
            raise InputError(
                f"cache key {text!r} must look like <fingerprint>/<sha256 of the token ids>[/<recipe id>]"
            )
        return cls(*text.split("/"))

    @property
    def context(self) -> CacheKey:
        """The key without its recipe id: every cache of this model and context."""
        return CacheKey(self.fingerprint, self.prefix)

    def with_recipe(self, recipe: str) -> CacheKey:
        return CacheKey(self.fingerprint, self.prefix, recipe_variant(recipe))

    def __str__(self) -> str:
        base = f"{self.fingerprint}/{self.prefix}"
        return f"{base}/{self.variant}" if self.variant else base
