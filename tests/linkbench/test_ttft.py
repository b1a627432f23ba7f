"""`kvstack bench ttft` end to end on the bundled retrieval model (18.9M parameters), short context."""

from __future__ import annotations

import pytest
import torch

import kvstack
from kvstack import wire
from kvstack.errors import InputError
from kvstack.eval.prompt import format_sample
from kvstack.eval.tasks import get_task
from kvstack.linkbench.link import burst_bytes, gbits
from kvstack.linkbench.payload import payload_file
from kvstack.linkbench.report import format_result
from kvstack.linkbench.ttft import TtftSpec, run_ttft

GBIT = 0.01  # 1.25 MB/s: the fp16 cache of 128 tokens (0.5 MB) takes ~0.4 s


@pytest.fixture(scope="module")
def retrieval():
    from kvstack.zoo import load

    torch.set_num_threads(1)
    return load("kvstack-retrieval")


@pytest.fixture(scope="module")
def result(retrieval, tmp_path_factory):
    model, tok = retrieval
    spec = TtftSpec(tokens=128, recipes=["int4"], bandwidths=[GBIT], samples=1, deadline_ms=60_000,
                    save_dir=str(tmp_path_factory.mktemp("payloads")))
    return run_ttft(spec, model, tok, progress=False)


def test_bytes_sent_are_the_file_sizes_of_the_right_caches(result, retrieval):
    model, tok = retrieval
    prompt = format_sample(tok, get_task("niah_single").samples(tok, 128, 1)[0])
    rows = {r.name: r for r in result.rows}
    assert {"text", "fp16", "int4"} <= set(rows)
    for row in result.rows:
        assert row.bytes == payload_file(result.spec.save_dir, row.name).stat().st_size
    for name in ("fp16", "int4"):  # what was sent is the recipe's cache of this context, bit for bit
        sent = wire.load(payload_file(result.spec.save_dir, name), model)
        assert wire.cache_differences(sent, kvstack.compress(model, prompt.context_ids, name)) == []
    text = wire.load(payload_file(result.spec.save_dir, "text"))
    assert text.layers == [] and torch.equal(text.context_ids.long(), prompt.context_ids)


def test_transfers_take_at_least_what_the_rate_allows(result):
    rate = gbits(GBIT)
    burst = burst_bytes(rate)  # what the bucket lets through at once (64 KiB at this rate)
    for row in result.rows:
        assert row.how == "measured"  # no cap, no budget: every cell is shaped for real
        assert row.receive_s >= (row.bytes - burst) / rate
        if row.bytes > burst:
            assert row.link_rate <= rate * row.bytes / (row.bytes - burst) * 1.01
        assert row.ttft_s >= row.receive_s + row.answer_s - 1e-6
    rows = {r.name: r for r in result.rows}
    assert rows["fp16"].receive_s > rows["int4"].receive_s  # 4x the bytes on the same link


def test_accuracy_and_the_adaptive_plan_are_reported(result):
    (tokens,) = result.contexts
    assert {name for t, name in result.accuracy if t == tokens} >= {"text", "fp16", "int4"}
    assert all(v in (0.0, 1.0) for v in result.accuracy.values())  # one sample: hit or miss
    plan = result.plans[(tokens, GBIT)]
    assert plan.meets  # a minute is enough for anything here
    adaptive = [r for r in result.rows if r.name.startswith("adaptive")]
    assert len(adaptive) == 1 and adaptive[0].predicted_s == pytest.approx(plan.predicted_s)
    text = format_result(result)
    assert "adaptive plans" in text and "int4" in text and "meets 60000 ms" in text


def test_bad_specs_fail_before_any_model_work():
    with pytest.raises(InputError, match="bandwidth"):
        TtftSpec(bandwidths=[0]).check()
    with pytest.raises(InputError, match="once"):
        TtftSpec(recipes=["int4", "int4"]).check()
    with pytest.raises(InputError, match="deadline"):
        TtftSpec(deadline_ms=-5).check()
    with pytest.raises(kvstack.errors.RecipeError):
        TtftSpec(recipes=["int5"]).check()


def test_cli_help_documents_what_is_measured(capsys):
    from kvstack.cli import main

    with pytest.raises(SystemExit):
        main(["bench", "ttft", "--help"])
    out = capsys.readouterr().out
    assert "TTFT =" in out and "--deadline" in out and "--bandwidth" in out
