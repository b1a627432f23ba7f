"""The accuracy path of benchmarks/lmcache_codecs.py (``--accuracy``) on one short RULER sample of
real SmolLM2 KV: every codec's row counts the same chunks, the full cache's row is the bf16 KV
unchanged and agrees with itself, lossless-enough int8 agrees with it, the byte ratios are the
codecs' own, and a context shorter than one LMCache chunk is an InputError."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmcache.v1.distributed", reason="LMCache is not installed: `make test-lmcache` runs these")

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import lmcache_accuracy as acc  # noqa: E402
import lmcache_codecs  # noqa: E402

from kvstack.errors import InputError  # noqa: E402

TASK = "ruler_niah_single_2"


def test_accuracy_rows_on_one_sample(smollm2):
    model, tok = smollm2
    items = acc.prompts(tok, [TASK], n=1, length=400, seed=0)
    (sample, prompt), = items
    assert prompt.context_ids.numel() >= acc.CHUNK
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    codecs = lmcache_codecs.codecs(head_dim, cfg.num_hidden_layers,
                                   os.path.expanduser("~/.cache/kvstack/smollm2-135m/hf"),
                                   cfg.num_key_value_heads * head_dim, recipes=("int4", "int8"), plugin=False)
    tallies = {t.codec: t for t in acc.run(model, tok, codecs, items, max_new_tokens=10)}

    assert list(tallies) == [acc.FULL, "LMCache fp8 (e4m3)", "LMCache CacheGen", "kvstack int4", "kvstack int8"]
    chunk_bytes = 2 * cfg.num_hidden_layers * acc.CHUNK * cfg.num_key_value_heads * head_dim * 2
    for t in tallies.values():
        assert t.n == 1 and t.bf16 == chunk_bytes * (prompt.context_ids.numel() // acc.CHUNK)
        assert 0 <= t.right <= 1 and len(t.answers) == 1
    assert tallies[acc.FULL].ratio == 1.0 and tallies[acc.FULL].agree == 1
    assert tallies["LMCache fp8 (e4m3)"].ratio == 2.0
    assert tallies["kvstack int4"].ratio > 3.1 and tallies["LMCache CacheGen"].ratio > 3.0  # int4: 5 bits an element
    assert tallies["kvstack int8"].agree == 1  # 1% relative error: the same greedy tokens
    assert "| kvstack int4 |" in acc.table(list(tallies.values()))


def test_context_shorter_than_a_chunk_is_an_input_error(smollm2):
    _, tok = smollm2
    with pytest.raises(InputError, match="less than one LMCache chunk"):
        acc.prompts(tok, [TASK], n=1, length=128, seed=0)
    with pytest.raises(InputError, match="at least one sample"):
        acc.prompts(tok, [TASK], n=0, length=400, seed=0)
