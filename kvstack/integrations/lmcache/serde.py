"""The ``"kvstack"`` serializer of LMCache's storage layer (``lmcache.v1.distributed.serde``).

LMCache wraps an L2 adapter that has ``"serde": {"type": "kvstack", ...}`` in its own serde
wrapper: before a store it asks :meth:`KvstackSerializer.estimate_serialized_size` for a
buffer, the serializer quantizes the chunk into it (:class:`~.chunk_codec.ChunkCodec`), and the
adapter stores that buffer; a load runs the other way. The estimate is exact, so no padding is
stored (LMCache 0.5.6 stores the whole estimated buffer, whatever the serializer wrote).

Settings (the ``serde`` JSON object, every one checked when LMCache builds the adapter, so a
layout kvstack cannot encode fails at start-up, not at the first store):

* ``recipe`` (default ``"int4"``: rotated, per-channel groups of 32 tokens) - any kvstack
  recipe of quantizers: ``int8``, ``int4``, ``int2:rot,clip=0.75``, ``kivi:2``, ...
* ``head_dim`` (required) - the model's per-head width; LMCache flattens heads.
* ``layout`` (optional) - ``{"shape": [2, layers, chunk_tokens, hidden], "dtype": "bfloat16"}``:
  the chunks the engine will send, checked now (dtype, shape, groups, rotation width).
* ``max_workers`` (default 1) - LMCache's serde threads.
"""

from __future__ import annotations

from kvstack.errors import ConfigError
from kvstack.integrations.lmcache.chunk_codec import ChunkCodec, Layout, layout_of
from kvstack.integrations.lmcache.deps import lmcache_module

serde_base = lmcache_module("lmcache.v1.distributed.serde.base")
serde_async = lmcache_module("lmcache.v1.distributed.serde.async_processor")
serde_factory = lmcache_module("lmcache.v1.distributed.serde.factory")

SERDE_NAME = "kvstack"
SETTINGS = ("recipe", "head_dim", "layout", "max_workers")


def _layout(desc) -> Layout:
    return layout_of(list(desc.shapes), list(desc.dtypes))


class KvstackSerializer(serde_base.Serializer):
    """Quantizes each LMCache KV chunk into an exactly sized kvstack frame."""

    def __init__(self, codec: ChunkCodec) -> None:
        self.codec = codec

    def serialize(self, src, dst, key) -> int:
        return self.codec.encode(src.tensor, dst.tensor.reshape(-1))

    def estimate_serialized_size(self, layout_desc) -> int:
        return self.codec.check(_layout(layout_desc))


class KvstackDeserializer(serde_base.Deserializer):
    """Decodes a kvstack frame back into the chunk's own layout and dtype."""

    def __init__(self, codec: ChunkCodec) -> None:
        self.codec = codec

    def deserialize(self, src, dst, key) -> None:
        self.codec.decode(src.tensor.reshape(-1), dst.tensor)


def codec_from_settings(kwargs: dict) -> ChunkCodec:
    """A :class:`ChunkCodec` from the ``serde`` JSON settings (ConfigError/RecipeError if unusable)."""
    unknown = sorted(set(kwargs) - set(SETTINGS))
    if unknown:
        raise ConfigError(f"kvstack serde: unknown setting(s) {unknown}; known: {', '.join(SETTINGS)}")
    if "head_dim" not in kwargs:
        raise ConfigError('kvstack serde needs "head_dim": the model\'s per-head width (e.g. 64 for SmolLM2)')
    codec = ChunkCodec(str(kwargs.get("recipe", "int4")), kwargs["head_dim"])
    layout = kwargs.get("layout")
    if layout is not None:
        if not isinstance(layout, dict) or set(layout) != {"shape", "dtype"}:
            raise ConfigError('kvstack serde: "layout" must be {"shape": [2, layers, tokens, hidden], "dtype": ...}')
        codec.check(layout_of([layout["shape"]], [layout["dtype"]]))
    return codec


def create_serde(kwargs: dict):
    """LMCache's serde factory for ``"type": "kvstack"``."""
    workers = kwargs.get("max_workers", 1)
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ConfigError(f"kvstack serde: max_workers={workers!r} must be a positive int")
    codec = codec_from_settings(kwargs)
    return serde_async.AsyncSerdeProcessor(KvstackSerializer(codec), KvstackDeserializer(codec), max_workers=workers)


def register() -> None:
    """Register ``"kvstack"`` with LMCache's serde factory (once per process; later calls do nothing)."""
    if SERDE_NAME not in serde_factory.get_registered_serde_types():
        serde_factory.register_serde_factory(SERDE_NAME, create_serde)
