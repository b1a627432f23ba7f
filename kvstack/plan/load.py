"""Turn what the user typed (a preset name, a Hub repo id of a preset, a config.json path, or
an already-loaded dict) into an ArchSpec."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from kvstack.errors import InputError
from kvstack.plan.config import read_config, spec_from_config
from kvstack.plan.presets import find_preset, preset_names
from kvstack.plan.spec import ArchSpec


def load_spec(name_or_path: str | Path | dict[str, Any]) -> ArchSpec:
    """The ArchSpec of a preset (``llama-3.1-8b``), a config.json path/directory, or a dict."""
    if isinstance(name_or_path, dict):
        config = name_or_path
        name = str(config.get("_name") or config.get("model_type") or "config")
        return _with_meta(spec_from_config(config, name, "config dict"), config)
    text = str(name_or_path)
    found = find_preset(text) if isinstance(name_or_path, str) else None
    if found is not None:
        name, config = found
        return _with_meta(spec_from_config(config, name, f"preset {name}"), config)
    path = Path(text)
    if path.exists():
        config = read_config(path)
        label = path.name if path.is_dir() else path.stem
        if label == "config" and not path.is_dir():
            label = path.parent.name or label
        return _with_meta(spec_from_config(config, label, str(path)), config)
    if path.suffix == ".json":
        raise InputError(f"config file {text!r} does not exist")
    raise InputError(
        f"{text!r} is neither a preset nor an existing config.json. Presets: "
        f"{', '.join(preset_names())}. Or pass the path of a model's config.json "
        "(or the directory holding it)."
    )


def _with_meta(spec: ArchSpec, config: dict[str, Any]) -> ArchSpec:
    """Apply preset metadata: a published parameter count and a note on what is approximate."""
    params = config.get("_params")
    note = config.get("_note")
    return replace(
        spec,
        params=params if isinstance(params, int) else spec.params,
        params_published=isinstance(params, int),
        notes=(*spec.notes, note) if note else spec.notes,
    )
