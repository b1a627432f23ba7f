"""`kvstack bench ttft` on a random-weight model (the GPU run's code path, on the CPU with a tiny shape):
measured cells where the link time allows, derived ones - exactly from the measured components - elsewhere."""

from __future__ import annotations

import json

import pytest
import torch

from kvstack.errors import InputError
from kvstack.linkbench.derive import Components, derived_receive, derived_ttft, transfer_seconds
from kvstack.linkbench.link import gbits
from kvstack.linkbench.models import build_random, parse_random
from kvstack.linkbench.ttft import DERIVED, MEASURED, TtftSpec, run_ttft

# Llama-3.1-8B's architecture, shrunk: 2 layers, 2 KV heads of dim 32, so the fp16 cache of 256 tokens
# is 2 x 2 x 2 x 256 x 32 x 2 B = 131,072 B: over the slow link's 64 KiB burst, under it for int4.
TINY = "random:llama-3.1-8b,num_hidden_layers=2,hidden_size=128,intermediate_size=128,num_attention_heads=4," \
       "num_key_value_heads=2,vocab_size=512"
SLOW, FAST = 0.001, 1.0  # Gbit/s: 125 KB/s and 125 MB/s
CAP = 0.5  # seconds of link time above which a cell is derived


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from kvstack.cli import main

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("ttft")
    code = main(["bench", "ttft", "--model", TINY, "--tokens", "256", "512", "--recipes", "int4", "--bandwidth",
                 str(SLOW), str(FAST), "--max-transfer-s", str(CAP), "--question-tokens", "8", "--quiet",
                 "--out", str(out / "t.md"), "--json", str(out / "t.json")])
    assert code == 0
    return json.loads((out / "t.json").read_text()), (out / "t.md").read_text()


def test_every_cell_is_there_and_labelled(report):
    data, _ = report
    rows = data["rows"]
    assert sorted((r["tokens"], r["gbit"], r["name"]) for r in rows) == sorted(
        (t, g, n) for t in (256, 512) for g in (SLOW, FAST) for n in ("text", "fp16", "int4"))
    for r in rows:  # derived exactly when the link alone would take longer than the cap
        assert r["how"] == (DERIVED if transfer_seconds(r["bytes"], gbits(r["gbit"])) > CAP else MEASURED)
    assert {r["how"] for r in rows} == {MEASURED, DERIVED}  # both kinds are exercised here
    assert all(r["accuracy"] is None for r in rows)  # random weights: no accuracy


def test_derived_cells_are_the_measured_components_combined(report):
    data, _ = report
    comps = {(c["tokens"], c["path"]): Components(c["nbytes"], c["receive_s"], c["answer_s"])
             for c in data["components"]}
    assert len(comps) == 6
    assert all(c["encode_s"] > 0 for c in data["components"] if c["path"] != "text")  # sender side, timed
    for r in data["rows"]:
        c, rate = comps[(r["tokens"], r["name"])], gbits(r["gbit"])
        assert r["bytes"] == c.nbytes
        assert r["derived_s"] == derived_ttft(c, rate)  # measured rows carry it too, to show the model's error
        if r["how"] == DERIVED:
            assert r["ttft_s"] == derived_ttft(c, rate) == r["receive_s"] + r["answer_s"]
            assert r["receive_s"] == derived_receive(c, rate) and r["link_rate"] is None
        else:
            assert r["link_rate"] > 0 and r["ttft_s"] >= r["receive_s"] + r["answer_s"] - 1e-6
    assert len(data["derivation_errors"]) == sum(r["how"] == MEASURED for r in data["rows"])


def test_fp16_bytes_by_hand(report):
    data, _ = report
    fp16 = {r["tokens"]: r["bytes"] for r in data["rows"] if r["name"] == "fp16"}
    for tokens, nbytes in fp16.items():  # the raw K/V plus a header, ids and frames of a few KB
        assert 2 * 2 * 2 * tokens * 32 * 2 < nbytes < 2 * 2 * 2 * tokens * 32 * 2 + 16_384


def test_report_says_what_is_derived_and_why_accuracy_is_missing(report):
    data, text = report
    assert "derived" in text and "measured" in text and "random weights" in text
    assert data["environment"]["device"] and data["environment"]["torch"] == torch.__version__
    assert data["spec"]["max_transfer_s"] == CAP


def test_a_spent_budget_derives_every_cell():
    torch.set_num_threads(1)
    model = build_random(parse_random(TINY), "cpu")
    spec = TtftSpec(model=TINY, tokens=[128], recipes=[], bandwidths=[FAST], question_tokens=4, budget_s=1e-6)
    result = run_ttft(spec, model, None, progress=False)
    assert [r.how for r in result.rows] == [DERIVED, DERIVED]  # text and fp16
    assert result.accuracy == {}


def test_bad_specs_fail_before_any_model_work():
    with pytest.raises(InputError, match="random weights"):
        TtftSpec(model=TINY, deadline_ms=500).check()
    with pytest.raises(InputError, match="distinct"):
        TtftSpec(tokens=[256, 256]).check()
    with pytest.raises(InputError, match="--max-transfer-s"):
        TtftSpec(max_transfer_s=0).check()
    with pytest.raises(InputError, match="--budget-s"):
        TtftSpec(budget_s=-1).check()


def test_cli_rejects_a_missing_gpu(capsys):
    from kvstack.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["bench", "ttft", "--model", TINY, "--device", "cuda", "--quiet"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
