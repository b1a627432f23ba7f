"""Put a decoded cache on the receiver's device, layer by layer as the wire stream completes them.

The wire decoder builds tensors on the CPU (from the bytes it checked). A GPU receiver must move
them before attention: left on the CPU, every step would dequantize there and copy dense rows
over. Encoded containers are rebuilt through the wire format's own registry (``parts`` out,
``build`` back, with the JSON meta the reader would see), so every container the wire format can
carry moves, validated, with no per-class code here.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from kvstack.kv import Encoded, KVCache, KVLayer


def _move(t: torch.Tensor | None, device: torch.device, memo: dict[int, torch.Tensor]) -> torch.Tensor | None:
    if t is None:
        return None
    if id(t) not in memo:  # a tensor shared between containers stays shared
        memo[id(t)] = t.to(device)
    return memo[id(t)]


def encoded_to(enc: Encoded, device: torch.device | str, memo: dict | None = None) -> Encoded:
    """``enc`` with every array on ``device`` (same class, same values)."""
    from kvstack.wire import jsonvalues
    from kvstack.wire.encodings import Symbols, encoding_for

    memo = {} if memo is None else memo
    device = torch.device(device)
    coding = encoding_for(enc)
    parts = coding.parts(enc)
    arrays = {k: _move(v.packed if isinstance(v, Symbols) else v, device, memo) for k, v in parts.arrays.items()}
    children = {k: encoded_to(c, device, memo) for k, c in parts.children.items()}
    meta = jsonvalues.load(jsonvalues.dump(parts.meta, coding.kind))
    return coding.build(meta, arrays, children)


def layer_to(layer: KVLayer, device: torch.device | str, memo: dict | None = None) -> KVLayer:
    """``layer`` with keys, values, positions and tensor meta on ``device``."""
    memo = {} if memo is None else memo
    device = torch.device(device)
    meta = {k: _move(v, device, memo) if isinstance(v, torch.Tensor) else v for k, v in layer.meta.items()}
    return replace(layer, keys=encoded_to(layer.keys, device, memo), values=encoded_to(layer.values, device, memo),
                   positions=_move(layer.positions, device, memo), meta=meta)


def cache_to(cache: KVCache, device: torch.device | str) -> KVCache:
    """The whole cache on ``device`` (token ids stay on the CPU, where ``kvstack.generate`` reads them)."""
    memo: dict[int, torch.Tensor] = {}
    return replace(cache, layers=[layer_to(layer, device, memo) for layer in cache.layers])
