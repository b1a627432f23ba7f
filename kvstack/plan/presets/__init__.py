"""Built-in architecture presets: config.json contents of well-known models, as Python dicts.

Keys starting with ``_`` are planner metadata, not config fields: ``_source`` (the Hub repo the
dimensions come from), ``_params`` (published parameter count, used by ``--weights auto``)
and ``_note`` (what is approximate or adjusted).
"""

from __future__ import annotations

import copy
from typing import Any

from kvstack.plan.presets.deepseek_gpt2 import DEEPSEEK_GPT2
from kvstack.plan.presets.gemma import GEMMA
from kvstack.plan.presets.llama import LLAMA
from kvstack.plan.presets.mistral import MISTRAL
from kvstack.plan.presets.qwen_phi import QWEN_PHI

PRESETS: dict[str, dict[str, Any]] = {**LLAMA, **MISTRAL, **QWEN_PHI, **GEMMA, **DEEPSEEK_GPT2}


def preset_names() -> list[str]:
    return list(PRESETS)


def find_preset(name: str) -> tuple[str, dict[str, Any]] | None:
    """``(canonical name, deep copy of the preset)`` by name or Hub repo id, case-insensitive."""
    key = name.strip().lower()
    for preset, data in PRESETS.items():
        if key in (preset, str(data.get("_source", "")).lower()):
            return preset, copy.deepcopy(data)
    return None
