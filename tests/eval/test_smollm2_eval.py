"""A short real evaluation on the bundled SmolLM2-135M, through the harness: the full cache
passes a floor that a destroyed cache (every value zeroed) cannot reach.

Passkey at 256 tokens: the answer is a random 5-digit number, so no cache that lost the
context can hit it by chance (p ~ 1e-5 per sample).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from kvstack.eval.results import read_rows
from kvstack.eval.runner import EvalSpec, Runner
from kvstack.kv import DenseRows

FLOOR = 2 / 3  # passkey accuracy of the full cache must reach this
PPL_FLOOR = 60.0  # held-out essay perplexity a working cache stays under (SmolLM2 full cache: ~20-40)


def zero_values(cache):
    return cache.map_layers(lambda i, layer: replace(layer, values=DenseRows(torch.zeros_like(layer.values.decode()))))


def destroyed(monkeypatch):
    from kvstack import api

    real = api.compress_many

    def compress_then_destroy(*args, **kwargs):
        for recipe, cache in real(*args, **kwargs):
            yield recipe, zero_values(cache)

    monkeypatch.setattr(api, "compress_many", compress_then_destroy)


def evaluate(smollm2, tmp_path, task: str, samples: int) -> list[dict]:
    model, tok = smollm2
    spec = EvalSpec("smollm2-135m", ["identity"], [task], [256], samples, max_new_tokens=8, threads=1)
    Runner(spec, tmp_path / f"{task}.jsonl", model=model, tokenizer=tok, progress=False, log=lambda m: None).run()
    rows, _ = read_rows(tmp_path / f"{task}.jsonl")
    assert len(rows) == samples and all(r["status"] == "ok" for r in rows)
    return rows


def accuracy(rows):
    return sum(r["contains"] for r in rows) / len(rows)


def perplexity(rows):
    return float(torch.exp(torch.tensor(sum(r["nll_sum"] for r in rows) / sum(r["nll_tokens"] for r in rows))))


def test_full_cache_passes_the_passkey_floor(smollm2, tmp_path):
    assert accuracy(evaluate(smollm2, tmp_path, "passkey", 3)) >= FLOOR


def test_destroyed_cache_fails_the_passkey_floor(smollm2, tmp_path, monkeypatch):
    destroyed(monkeypatch)
    rows = evaluate(smollm2, tmp_path, "passkey", 3)
    assert accuracy(rows) < FLOOR
    assert all(r["cache_bytes"] == r["dense_bytes"] for r in rows)  # same size: only the contents were destroyed


def test_perplexity_floor_separates_a_working_from_a_destroyed_cache(smollm2, tmp_path, monkeypatch):
    good = perplexity(evaluate(smollm2, tmp_path / "good", "ppl", 2))
    destroyed(monkeypatch)
    bad = perplexity(evaluate(smollm2, tmp_path / "bad", "ppl", 2))
    assert good < PPL_FLOOR < bad, (good, bad)


@pytest.mark.slow
def test_kvpress_without_a_press_answers_exactly_like_the_identity_cache(smollm2, tmp_path):
    """Both harnesses on identical ids: kvpress's pipeline decoding (no press) = kvstack's identity."""
    from kvstack.eval.peers.kvpress_bridge import peers_python

    try:
        peers_python()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(str(exc))
    model, tok = smollm2
    spec = EvalSpec("smollm2-135m", ["identity", "kvpress:none"], ["passkey"], [256], 2, max_new_tokens=8)
    Runner(spec, tmp_path / "p.jsonl", model=model, tokenizer=tok, progress=False, log=lambda m: None).run()
    rows, _ = read_rows(tmp_path / "p.jsonl")
    by = {(r["recipe"], r["index"]): r for r in rows}
    for i in range(2):
        a, b = by[("identity", i)], by[("kvpress:none", i)]
        assert a["prediction"] == b["prediction"] and a["cache_bytes"] == b["cache_bytes"]
        assert b["answer_nll_sum"] == pytest.approx(a["answer_nll_sum"], rel=1e-4)
