"""kvstack's codec inside LMCache 0.5.6 (``pip install kvstack[lmcache]``; docs/lmcache.md).

* :mod:`.serde` - the serializer registered as ``"kvstack"``: each LMCache KV chunk quantized
  by a kvstack recipe (default ``int4``) into an exactly sized frame (:mod:`.chunk_codec`).
* :mod:`.adapter` - a ``plugin`` L2 adapter that entropy-codes what it stores (:mod:`.packing`)
  and keeps exact sizes in a kvstack store (a directory or Redis).
* :mod:`.server` - ``python -m kvstack.integrations.lmcache.server``: ``lmcache server`` with the
  serializer registered.
* :mod:`.chunks` - a kvstack cache cut into LMCache chunks and rebuilt from reloaded ones
  (benchmarks and tests: the model generates from KV that went through LMCache).

Importing this package does not import LMCache; :func:`register` does (MissingDependencyError
with the pip command when it is not installed). The codec and the packing need only kvstack.
"""

from __future__ import annotations


def register() -> None:
    """Make ``"serde": {"type": "kvstack", ...}`` available to LMCache in this process (idempotent)."""
    from kvstack.integrations.lmcache.serde import register as register_serde

    register_serde()
