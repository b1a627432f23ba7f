"""The docs generator: preset table and the combined-effect ladder (hand-counted at 128K)."""

from __future__ import annotations

import pytest

from kvstack.plan.planner import plan_with
from kvstack.plan.presets import preset_names
from kvstack.plan.report import combined_steps, preset_table, steps_table

K128 = 131072
LAYER_TOKEN = 4096  # llama-3.1-8b: 8 KV heads x 256 x bf16, per layer per token
INT4_LAYER_TOKEN = 16 * 640 // 8  # 16 vectors x (128 x 4 + 128 x 32 / 32) bits = 1280 bytes (channel groups of 32)
TAGS = 8 * 4  # kvstack's int32 position tag per kept token per KV head (selection only)


def test_preset_table_lists_every_preset():
    table = preset_table()
    for name in preset_names():
        assert f"| {name} |" in table
    assert "10.41 GiB" in table  # gemma-3-27b @ 128K
    assert "| 70,272 |" in table and "| 516,096 |" in table


def test_combined_ladder_at_128k():
    ladder, alone = combined_steps("llama-3.1-8b")
    totals = [plan_with(s.spec, K128, 1, s.storage).total_bytes for s in ladder]
    assert totals == [
        32 * K128 * 4 * LAYER_TOKEN,  # MHA: 32 KV heads
        32 * K128 * LAYER_TOKEN,  # GQA 8
        (5 * K128 + 27 * 1024) * LAYER_TOKEN,  # 5:1 sliding, window 1024
        (2 * K128 + 14 * 1024) * LAYER_TOKEN,  # + last 16 layers shared
        (2 * K128 + 14 * 1024) * INT4_LAYER_TOKEN,  # + int4
        (2 * 32768 + 14 * 256) * (INT4_LAYER_TOKEN + TAGS),  # + snapkv 0.25
    ]
    mla = next(s for s in alone if s.label.startswith("MLA"))
    assert plan_with(mla.spec, K128, 1, mla.storage).total_bytes == 32 * K128 * 576 * 2


def test_steps_table_shows_reduction():
    ladder, _ = combined_steps("llama-3.1-8b")
    table = steps_table(ladder[:2])
    assert "1/4.0 (-75.0%)" in table and "64.00 GiB" in table


def test_plot_combined(tmp_path):
    pytest.importorskip("matplotlib")
    from kvstack.plan.report import plot_combined

    path = tmp_path / "combined.png"
    plot_combined(str(path))
    assert path.stat().st_size > 10_000
