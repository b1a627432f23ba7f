"""On real KV (SmolLM2-135M on a Paul Graham essay): entropy-coded INT4 codes are at least 1.2x
smaller than the packed INT4 codes, the round trip is exact and answers are unchanged. Slow: it
loads the real model (`make test-slow`)."""

from __future__ import annotations

import pytest
import torch

import kvstack
from kvstack import wire
from kvstack.errors import ModelNotInstalledError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol():
    from kvstack.zoo import load

    try:
        return load("smollm2-135m")
    except ModelNotInstalledError as exc:  # pragma: no cover - make installs it
        pytest.skip(str(exc))


def test_entropy_coded_int4_beats_packed_int4_by_1_2x_and_is_exact(smol):
    from kvstack.eval.texts import essay
    from kvstack.prompting import split_prompt

    model, tok = smol
    ctx, q = split_prompt(tok, essay("worked")[:6000], "What did the author work on?")
    cache = kvstack.compress(model, ctx, "int4")
    packed = sum(e.codes.numel() for layer in cache.layers for e in (layer.keys, layer.values))
    blob = wire.encode(cache, codes="ans")
    coded = wire.byte_breakdown(blob)["codes"]
    assert packed / coded >= 1.2, f"ans codes {coded} B vs packed {packed} B"
    fast = wire.byte_breakdown(wire.encode(cache, codes="colzstd"))["codes"]
    assert packed / fast >= 1.2, f"colzstd codes {fast} B vs packed {packed} B"
    back = wire.decode(blob)
    assert wire.cache_differences(cache, back) == []
    assert torch.equal(kvstack.generate(model, cache, q, 8), kvstack.generate(model, back, q, 8))
