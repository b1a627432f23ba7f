"""Report arithmetic on hand-made rows: relative accuracy and agreement against the full cache on
the same samples only, perplexity from summed NLL, and the Pareto frontier."""

import math

import pytest

from kvstack.eval.report import markdown, summarize


def qa(recipe, index, contains, prediction, nbytes, system="kvstack"):
    return {"model": "m", "task": "qa", "length": 1024, "recipe": recipe, "index": index, "status": "ok",
            "context_tokens": 1000, "bytes_per_token": nbytes, "ratio": 4096 / nbytes, "exact": 0.0,
            "contains": contains, "f1": contains, "prediction": prediction, "system": system,
            "answer_nll_sum": 2.0 * (1 + (recipe != "identity")), "answer_tokens": 2}


def ppl(recipe, index, nll, nbytes):
    return {"model": "m", "task": "ppl", "length": 1024, "recipe": recipe, "index": index, "status": "ok",
            "context_tokens": 1000, "bytes_per_token": nbytes, "ratio": 4096 / nbytes, "nll_sum": nll,
            "nll_tokens": 100}


def test_relative_accuracy_agreement_and_frontier():
    rows = [
        *(qa("identity", i, c, p, 4096) for i, (c, p) in enumerate([(1, "a"), (1, "b"), (0, "c"), (1, "d")])),
        *(qa("int4", i, c, p, 1024) for i, (c, p) in enumerate([(1, "a"), (0, "x"), (0, "c"), (1, "d")])),
        *(qa("snapkv:0.5", i, c, p, 2048) for i, (c, p) in enumerate([(0, "y"), (0, "x"), (0, "z"), (1, "d")])),
        qa("kvpress:X", 0, 1, "a", 2048, system="kvpress"),  # only sample 0: compared on sample 0 only
        {"model": "m", "task": "qa", "length": 1024, "recipe": "q2c:0.5", "index": 0, "status": "skipped",
         "reason": "InputError: no question"},
    ]
    s = {x["recipe"]: x for x in summarize(rows)}
    assert s["identity"]["contains"] == 0.75 and s["identity"]["relative"] == 1.0 and s["identity"]["agree"] == 1.0
    assert s["int4"]["contains"] == 0.5 and s["int4"]["relative"] == pytest.approx(0.5 / 0.75)
    assert s["int4"]["agree"] == 0.75  # a, x, c, d vs a, b, c, d
    assert s["int4"]["answer_nll"] == 2.0 and s["int4"]["answer_nll_delta"] == 1.0
    assert s["kvpress:X"]["relative"] == 1.0 and s["kvpress:X"]["contains_full"] == 1.0
    assert s["q2c:0.5"]["n"] == 0 and s["q2c:0.5"]["skipped"] == 1
    # frontier: int4 (fewest bytes) and kvpress:X (2048 B, accuracy 1.0); identity and snapkv are dominated
    assert {r for r, x in s.items() if x.get("frontier")} == {"int4", "kvpress:X"}
    text = markdown(list(s.values()))
    assert "`snapkv:0.5`" in text and "skipped 1: InputError" in text


def test_perplexity_is_pooled_over_tokens_and_compared_on_shared_samples():
    rows = [ppl("identity", 0, 100 * math.log(10), 4096), ppl("identity", 1, 100 * math.log(30), 4096),
            ppl("int2", 0, 100 * math.log(20), 512)]
    s = {x["recipe"]: x for x in summarize(rows)}
    assert s["identity"]["ppl"] == pytest.approx(math.sqrt(300))
    assert s["int2"]["ppl"] == pytest.approx(20) and s["int2"]["ppl_full"] == pytest.approx(10)
    assert s["int2"]["ppl_delta"] == pytest.approx(10)
    assert s["int2"]["frontier"] and s["identity"]["frontier"]


def test_an_error_redone_by_a_resumed_run_counts_once():
    error = {**qa("int4", 1, 0, "", 1024), "status": "error", "reason": "RuntimeError: CUDA out of memory"}
    for k in ("contains", "prediction", "bytes_per_token"):
        error.pop(k)
    rows = [qa("int4", 0, 1, "a", 1024), error, {**error, "reason": "ActorDiedError: node lost"},
            qa("int4", 1, 1, "b", 1024), {**error, "index": 2}, {**error, "index": 2, "reason": "again"}]
    s = summarize(rows)[0]
    assert s["n"] == 2 and s["contains"] == 1.0  # index 1 failed twice, then ran: its error rows are gone
    assert s["skipped"] == 1 and s["skip_reason"] == "again"  # index 2 never finished: its last error, once


def test_rows_of_two_weight_dtypes_or_two_seeds_are_reported_apart():
    """fp32 and bf16 full caches of the same samples (or two seeds' sample 0) must not pool into one n,
    nor pair a recipe with the other dtype's full-cache answers."""
    bf16 = [{**qa("identity", i, 1, "a", 4096), "dtype": "bfloat16", "seed": 4} for i in range(2)]
    bf16 += [{**qa("int4", i, 0, "x", 1024), "dtype": "bfloat16", "seed": 4} for i in range(2)]
    fp32 = [{**qa("identity", i, 0, "b", 8192), "dtype": "float32", "seed": 4} for i in range(2)]
    s = {(x["model"], x["recipe"]): x for x in summarize(bf16 + fp32)}
    assert s[("m (bfloat16 weights)", "identity")]["n"] == 2 and s[("m (float32 weights)", "identity")]["n"] == 2
    assert s[("m (bfloat16 weights)", "int4")]["relative"] == 0.0  # against bf16's 2/2, not a pooled 2/4
    other_seed = [{**qa("identity", 0, 1, "a", 4096), "dtype": "bfloat16", "seed": 2}]
    labels = {x["model"] for x in summarize(bf16 + other_seed)}
    assert labels == {"m (seed 4)", "m (seed 2)"}
    assert {x["model"] for x in summarize(bf16)} == {"m"}  # one dtype, one seed: the plain name
