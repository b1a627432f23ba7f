"""kvstack.eval.paired and `kvstack paired`: recipe vs full cache on the same samples, pooled over seeds.

Why: the held-out claims of issue 17 (int4 keeps 98% of multi-key) hinge on a handful of flipped
answers; the statistics must pair the right rows (same sample, seed, device), count each cell once
after a resumed run, and give the exact McNemar p-value a hand computation gives.
"""

from __future__ import annotations

import json
import math

import pytest

from kvstack.cli import main
from kvstack.eval.paired import bootstrap_relative, mcnemar_exact, paired_stats


def row(seed: int, index: int, recipe: str, right: bool, nll: float = 1.0, device: str = "cpu", **extra) -> dict:
    return {"model": "m", "dtype": "bfloat16", "seed": seed, "task": "t", "length": 4096, "index": index,
            "device": device, "recipe": recipe, "status": "ok", "contains": float(right),
            "answer_nll_sum": nll * 4, "answer_tokens": 4, "ratio_fp16": 3.5, **extra}


def test_mcnemar_exact_matches_the_binomial_by_hand():
    assert mcnemar_exact(10, 3) == pytest.approx(2 * sum(math.comb(13, i) for i in range(4)) / 2**13)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(3, 3) == 1.0
    assert mcnemar_exact(6, 0) == pytest.approx(2 / 64)


def test_pairs_by_sample_pools_seeds_and_counts_a_resumed_cell_once():
    rows = []
    for seed in (1, 2):
        for i in range(4):
            rows.append(row(seed, i, "identity", True, nll=1.0))
            rows.append(row(seed, i, "int4", i != 0, nll=1.5))  # each seed loses sample 0
    rows.append(row(1, 1, "int4", False, status="error"))  # an error a resumed run redid: not counted
    rows.append(row(1, 9, "int4", True))  # no full-cache row for this sample: not paired
    rows.append(row(2, 0, "int4", True, device="cuda"))  # the full cache of this sample ran on the CPU only
    (s,) = paired_stats(rows)
    assert (s.seeds, s.n, s.full_right, s.right, s.lost, s.gained) == ((1, 2), 8, 8, 6, 2, 0)
    assert s.relative == pytest.approx(0.75)
    assert s.dnll == pytest.approx(0.5) and s.dnll_se == pytest.approx(0.0)
    assert s.low <= 0.75 <= s.high and s.p_mcnemar == pytest.approx(0.5)


def test_bootstrap_is_seeded_and_none_without_a_full_answer():
    rows = [row(1, i, r, ok) for i in range(10) for r, ok in (("identity", i % 2 == 0), ("int4", i % 3 == 0))]
    (a,), (b,) = paired_stats(rows), paired_stats(rows)
    assert (a.low, a.high) == (b.low, b.high)
    assert bootstrap_relative([]) is None


def test_cli_prints_the_table_and_refuses_files_without_a_full_cache(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(row(1, i, r, True)) + "\n" for i in range(3) for r in ("identity", "int4")))
    assert main(["paired", str(path), "--recipes", "int4"]) == 0
    assert "| m | t | 4096 | `int4` | 1 | 3 | 3 | 3 | 0 / 0 | 100%" in capsys.readouterr().out
    alone = tmp_path / "alone.jsonl"
    alone.write_text(json.dumps(row(1, 0, "int4", True)) + "\n")
    assert main(["paired", str(alone)]) != 0
    assert "identity" in capsys.readouterr().err


def test_spellings_of_one_recipe_pool_and_other_recipes_do_not():
    rows = [row(1, i, "identity", True) for i in range(2)]
    rows += [row(1, 0, "int4", True), row(1, 1, "int4:axis=channel,g32", False), row(1, 0, "int4:group=64", True)]
    stats = {s.recipe: s for s in paired_stats(rows)}
    assert set(stats) == {"int4", "int4:group=64"}
    assert (stats["int4"].n, stats["int4"].lost) == (2, 1) and stats["int4:group=64"].n == 1


def test_against_pairs_a_candidate_with_another_recipe_on_the_same_samples(tmp_path, capsys):
    rows = [row(1, i, "identity", True) for i in range(3)]
    rows += [row(1, i, "int4", i != 2) for i in range(3)]  # the preset misses sample 2
    rows += [row(1, i, "int4:g64", i != 0) for i in range(3)] + [row(1, 3, "int4:g64", True)]  # sample 3: no int4
    stats = {s.recipe: s for s in paired_stats(rows, "int4")}
    assert set(stats) == {"identity", "int4:g64"}  # the baseline itself is not a line
    g64 = stats["int4:g64"]
    assert (g64.n, g64.full_right, g64.right, g64.lost, g64.gained) == (3, 2, 2, 1, 1)
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["paired", str(path), "--against", "int4:axis=channel", "--recipes", "int4:g64"]) == 0
    out = capsys.readouterr().out
    assert "| `int4:axis=channel` | recipe |" in out and "| `int4:g64` | 1 | 3 | 2 | 2 | 1 / 1 | 100%" in out
    assert main(["paired", str(path), "--against", "int2"]) != 0
    assert "'int2'" in capsys.readouterr().err


def test_a_preset_row_pools_by_what_the_name_meant_when_it_ran():
    from kvstack.eval.jobs import recipe_record
    from kvstack.grammar.presets import PRESETS
    from kvstack.grammar.syntax import canonical_recipe

    assert recipe_record("qa:16x") == {"canonical": canonical_recipe(PRESETS["qa:16x"].recipe),
                                       "expanded": PRESETS["qa:16x"].recipe}
    assert recipe_record("int4") == {"canonical": canonical_recipe("int4:g32")} and recipe_record("nosuch:1") == {}
    rows = [row(1, i, "identity", True) for i in range(2)]
    rows += [row(1, 0, "qa:16x", False, expanded="q2c:0.125,span=16 > gear:4"),  # an older qa:16x
             row(1, 1, "qa:16x", True, **recipe_record("qa:16x")), row(1, 0, PRESETS["qa:16x"].recipe, True)]
    stats = {s.recipe: s for s in paired_stats(rows)}
    assert set(stats) == {"qa:16x", "q2c:0.125,span=16 > gear:4"}  # the old meaning is shown as it was
    assert (stats["qa:16x"].n, stats["qa:16x"].lost) == (2, 0)
    assert (stats["q2c:0.125,span=16 > gear:4"].n, stats["q2c:0.125,span=16 > gear:4"].lost) == (1, 1)


def test_a_row_pools_by_the_defaults_it_ran_under():
    # `int4` meant groups of 64 until the fifth session: a row that recorded so pools with `int4:g64`,
    # not with today's `int4` (groups of 32), whatever its recipe text says
    from kvstack.grammar.syntax import canonical_recipe

    old = canonical_recipe("int4:g64")
    assert old != canonical_recipe("int4") and canonical_recipe(old) == old  # it parses back to itself
    rows = [row(1, i, "identity", True) for i in range(3)]
    rows += [row(1, 0, "int4", False, canonical=old), row(1, 1, "int4:g64", False), row(1, 2, "int4", True)]
    stats = {s.recipe: s for s in paired_stats(rows)}
    assert (stats["int4:g64"].n, stats["int4:g64"].lost) == (2, 2)
    assert (stats["int4"].n, stats["int4"].lost) == (1, 0)
