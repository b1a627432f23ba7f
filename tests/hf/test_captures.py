"""Capture providers (kvstack.hf.captures): the prefill driver runs the provider of each need a
stage declares, and nothing else; a new provider plugs in without touching the driver."""

from __future__ import annotations

import pytest
import torch

from kvstack.errors import ConfigError
from kvstack.grammar.needs import KVZIP_SECONDS, NEED_KVZIP, NEED_LOCAL_NLL, NEED_OPROJ, NEED_ROPE, NEED_TOKEN_NLL
from kvstack.hf.captures import (
    BUILTIN,
    CaptureProvider,
    provided,
    providers_for,
    register_provider,
    unregister_provider,
)
from kvstack.hf.model import model_info
from kvstack.hf.prefill import prefill

T, CHUNK = 20, 8


class _Chunks:
    """A during-provider that records the logits shape and start of every chunk it is fed."""

    def __init__(self, total: int) -> None:
        self.total, self.seen = total, []

    def update(self, logits: torch.Tensor, ids: torch.Tensor, start: int) -> None:
        self.seen.append((tuple(logits.shape[:1]), ids.numel(), start))

    def result(self) -> dict:
        return {"test_chunks": (self.total, self.seen)}


@pytest.fixture
def extra_providers():
    added = [
        CaptureProvider("test_chunks", during=_Chunks),
        CaptureProvider("test_after", after=lambda i: {"test_after": (i.cache.context_length, sorted(i.needs))}),
        CaptureProvider("test_never", after=lambda i: (_ for _ in ()).throw(AssertionError("ran unasked"))),
    ]
    for p in added:
        register_provider(p)
    yield
    for p in added:
        unregister_provider(p.need)


def test_builtin_providers_supply_every_non_attention_need():
    assert {NEED_TOKEN_NLL, NEED_LOCAL_NLL, NEED_ROPE, NEED_OPROJ, NEED_KVZIP} <= provided()
    assert [p.need for p in providers_for({NEED_KVZIP, "attention", NEED_ROPE})] == [NEED_ROPE, NEED_KVZIP]
    assert providers_for({"attention", "window_queries", "no_such_capture"}) == []
    assert {p.need for p in BUILTIN} == {NEED_TOKEN_NLL, NEED_LOCAL_NLL, NEED_ROPE, NEED_OPROJ, NEED_KVZIP}
    # a parameterized need (name:key=value) goes to its name's provider
    assert [p.need for p in providers_for({"local_nll:window=64"})] == [NEED_LOCAL_NLL]


@torch.no_grad()
def test_registered_providers_run_in_the_prefill_and_only_when_asked(extra_providers, tiny_model, make_ids):
    model = tiny_model("llama")
    pre = prefill(model, model_info(model), make_ids(T, seed=3), frozenset({"test_chunks", "test_after"}),
                  chunk_size=CHUNK)
    total, seen = pre.captures["test_chunks"]
    # a during-provider sees every position's logits, chunk by chunk
    assert total == T and seen == [((8,), 8, 0), ((8,), 8, 8), ((4,), 4, 16)]
    assert pre.captures["test_after"] == (T, ["test_after", "test_chunks"])
    assert "test_never" not in pre.captures


@torch.no_grad()
def test_token_nll_provider_equals_the_models_own_log_softmax(tiny_model, make_ids):
    model = tiny_model("llama")
    ids = make_ids(T, seed=4)
    pre = prefill(model, model_info(model), ids, frozenset({NEED_TOKEN_NLL}), chunk_size=CHUNK)
    logp = torch.log_softmax(model(input_ids=ids.view(1, -1)).logits[0].double(), dim=-1)
    want = -logp[:-1].gather(1, ids[1:].view(-1, 1)).flatten()
    nll = pre.captures[NEED_TOKEN_NLL]
    assert nll[0] == float("inf") and nll.shape == (T,)
    torch.testing.assert_close(nll[1:].double(), want, atol=1e-4, rtol=0)


@torch.no_grad()
def test_after_providers_get_the_dense_cache(tiny_model, make_ids):
    model = tiny_model("llama")
    info = model_info(model)
    pre = prefill(model, info, make_ids(T, seed=5), frozenset({NEED_OPROJ, NEED_KVZIP, NEED_ROPE}), chunk_size=CHUNK)
    assert set(pre.captures[NEED_OPROJ]) == set(range(info.num_layers))
    assert pre.captures[NEED_OPROJ][0].shape == (info.num_query_heads, info.head_dim, model.config.hidden_size)
    assert pre.captures[NEED_KVZIP][0].shape == (info.num_kv_heads, T)
    assert pre.captures[KVZIP_SECONDS] > 0
    assert set(pre.captures[NEED_ROPE]) == set(range(info.num_layers))


def test_a_provider_gives_exactly_one_of_during_and_after():
    with pytest.raises(ConfigError, match="exactly one"):
        CaptureProvider("x")
    with pytest.raises(ConfigError, match="exactly one"):
        CaptureProvider("x", during=_Chunks, after=lambda i: {})


def test_a_need_has_one_provider_and_a_refused_one_changes_nothing():
    before = providers_for({NEED_ROPE})
    with pytest.raises(ConfigError, match="already has a provider"):
        register_provider(CaptureProvider(NEED_ROPE, after=lambda i: {}))
    assert providers_for({NEED_ROPE}) == before
