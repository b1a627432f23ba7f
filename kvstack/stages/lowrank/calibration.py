"""Calibrated bases: fitted once on calibration text, saved next to a JSON description, tied to a model.

Files (never pickle): ``NAME.safetensors`` holds the tensors, ``NAME.json`` says what they are::

    svd.k.<layer>      [H, d, d]   per-head key basis (post-RoPE), columns by singular value
    svd.k.<layer>.s    [H, d]      its singular values (used to pick a rank for energy=E)
    svd.kpre.<layer>   [H, d, d]   per-head basis of keys before RoPE (when rotary tables were given)
    svd.v.<layer>      [H, d, d]   per-head value basis
    latent.<layer>     [2Hd, 2Hd]  joint basis of [all heads' keys | all heads' values] per token

The JSON carries ``model_fingerprint`` (:class:`~kvstack.hf.model.ModelInfo`'s hash of the
config); a stage refuses a file made for another model with a :class:`ModelError`. A
calibrated basis lives outside the cache (one copy per model, shared by every cache), so
cache ``nbytes`` counts only coefficients.

Fitting accumulates Gram matrices ``X^T X`` in float64 over any number of sequences; their
eigenvectors are the SVD basis of all rows stacked, and the square roots of their eigenvalues
the singular values, without holding every row at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kvstack.errors import InputError, ModelError
from kvstack.kv import KVCache
from kvstack.stages.common.rope import Rotary
from kvstack.stages.lowrank.fit import Basis

FORMAT = "kvstack-lowrank-basis"
VERSION = 1


def basis_paths(path: str | Path) -> tuple[Path, Path]:
    """``(NAME.safetensors, NAME.json)`` for ``NAME``, ``NAME.safetensors`` or ``NAME.json``."""
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def basis_from_gram(gram: torch.Tensor) -> Basis:
    """Basis of the rows whose Gram matrix is ``gram``: eigenvectors by descending eigenvalue."""
    values, vectors = torch.linalg.eigh(gram.double())
    order = torch.argsort(values, descending=True)
    return Basis(vectors=vectors[:, order].float().contiguous(), singular=values[order].clamp_min(0).sqrt().float())


@dataclass
class GramAccumulator:
    """Sums ``X^T X`` per (layer, part) over calibration sequences, then turns them into bases."""

    grams: dict[str, torch.Tensor] = field(default_factory=dict)
    tokens: int = 0
    sequences: int = 0

    def _add(self, key: str, x: torch.Tensor) -> None:
        x = x.double()
        g = x.mT @ x
        self.grams[key] = g if key not in self.grams else self.grams[key] + g

    def add(self, cache: KVCache, rope: dict[int, Rotary] | None = None) -> None:
        """Add every layer of a (full, uniform) cache: per-head keys/values and the joint K|V rows."""
        for i, layer in enumerate(cache.layers):
            h, n = layer.num_heads, layer.max_length
            if not layer.uniform:
                raise InputError("calibrate on full caches (identity recipe): every head needs every token")
            k = layer.keys.decode().reshape(h, n, -1)
            v = layer.values.decode().reshape(h, n, -1)
            for head in range(h):
                self._add(f"svd.k.{i}.{head}", k[head])
                self._add(f"svd.v.{i}.{head}", v[head])
                if rope is not None:
                    pos = layer.row_positions()[head * n : (head + 1) * n]
                    self._add(f"svd.kpre.{i}.{head}", rope[i].unrotate(k[head].double(), pos))
            joint = torch.cat([k.transpose(0, 1).reshape(n, -1), v.transpose(0, 1).reshape(n, -1)], dim=1)
            self._add(f"latent.{i}", joint)
        self.tokens += cache.context_length
        self.sequences += 1

    def tensors(self, num_layers: int, num_heads: int) -> dict[str, torch.Tensor]:
        """The safetensors content (see the module docstring)."""
        out: dict[str, torch.Tensor] = {}
        for i in range(num_layers):
            for part in ("k", "kpre", "v"):
                if f"svd.{part}.{i}.0" not in self.grams:
                    continue
                bases = [basis_from_gram(self.grams[f"svd.{part}.{i}.{h}"]) for h in range(num_heads)]
                out[f"svd.{part}.{i}"] = torch.stack([b.vectors for b in bases])
                out[f"svd.{part}.{i}.s"] = torch.stack([b.singular for b in bases])
            b = basis_from_gram(self.grams[f"latent.{i}"])
            out[f"latent.{i}"], out[f"latent.{i}.s"] = b.vectors, b.singular
        return out


def save_basis(
    path: str | Path, tensors: dict[str, torch.Tensor], description: dict
) -> tuple[Path, Path]:
    """Write ``NAME.safetensors`` and ``NAME.json``; ``description`` must hold ``model_fingerprint``."""
    from safetensors.torch import save_file

    if not description.get("model_fingerprint"):
        raise InputError("a calibrated basis needs the model_fingerprint of the model it was fitted on")
    st, js = basis_paths(path)
    st.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(st))
    meta = {"format": FORMAT, "version": VERSION, **description, "tensors": sorted(tensors)}
    js.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return st, js


@dataclass(frozen=True, eq=False)
class CalibratedBasis:
    """A loaded basis file: the description and the tensors, read once and shared by every cache."""

    description: dict
    tensors: dict[str, torch.Tensor]
    source: str

    @property
    def fingerprint(self) -> str:
        return str(self.description.get("model_fingerprint", ""))

    def check_model(self, fingerprint: str, what: str) -> None:
        """ModelError unless the cache was made by the model the basis was fitted on."""
        if fingerprint and fingerprint != self.fingerprint:
            raise ModelError(
                f"{what}: the basis {self.source} was calibrated on another model (fingerprint "
                f"{self.fingerprint}; this cache's model is {fingerprint}). Calibrate one for this model: "
                f"kvstack calibrate --model MODEL --out {self.source}"
            )

    def get(self, key: str, what: str) -> torch.Tensor:
        t = self.tensors.get(key)
        if t is None:
            raise InputError(
                f"{what}: the basis {self.source} has no '{key}' (it holds {', '.join(sorted(self.tensors)[:6])}"
                f"...); calibrate again with this kvstack (`kvstack calibrate`), with --rope for rope=pre"
            )
        return t

    def svd(self, layer: int, part: str, what: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``vectors [H, d, d]`` and ``singular [H, d]`` of ``part`` (``k``, ``kpre``, ``v``) of ``layer``."""
        return self.get(f"svd.{part}.{layer}", what), self.get(f"svd.{part}.{layer}.s", what)

    def latent(self, layer: int, what: str) -> Basis:
        return Basis(self.get(f"latent.{layer}", what), self.get(f"latent.{layer}.s", what))


_LOADED: dict[tuple[str, float, float], CalibratedBasis] = {}
_KEEP = 4


def load_basis(path: str | Path) -> CalibratedBasis:
    """Read a basis (once per file version); InputError says how to make one when it is missing or bad."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    st, js = basis_paths(path)
    for p in (st, js):
        if not p.is_file():
            raise InputError(
                f"calibrated basis file {p} does not exist; make one with "
                f"`kvstack calibrate --model MODEL --out {st.with_suffix('')}` or drop basis= to fit per context"
            )
    key = (str(st.resolve()), st.stat().st_mtime, js.stat().st_mtime)
    if key in _LOADED:
        return _LOADED[key]
    try:
        description = json.loads(js.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{js} is not valid JSON ({exc}); calibrate again with `kvstack calibrate`") from exc
    if not isinstance(description, dict) or description.get("format") != FORMAT:
        raise InputError(f"{js} is not a kvstack low-rank basis description (format {FORMAT!r} expected)")
    if description.get("version") != VERSION:
        raise InputError(
            f"{js} has version {description.get('version')}; this kvstack reads version {VERSION}: calibrate again"
        )
    try:
        tensors = load_file(str(st))
    except (SafetensorError, OSError) as exc:
        raise InputError(f"{st} is not a readable safetensors file ({exc}); calibrate again") from exc
    basis = CalibratedBasis(description=description, tensors=tensors, source=str(st.with_suffix("")))
    while len(_LOADED) >= _KEEP:  # a few files stay loaded (one per model in use), the oldest go
        _LOADED.pop(next(iter(_LOADED)))
    _LOADED[key] = basis
    return basis
