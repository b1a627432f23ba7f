"""Calibrated codebooks for ``kvquant`` and ``cq``: fitted once on calibration text, tied to a model.

Stored in the same container as calibrated low-rank bases (NAME.safetensors + NAME.json with
the model fingerprint, :mod:`kvstack.stages.lowrank.calibration`; the JSON's ``kind`` is
``quant-codebooks``)::

    kvquant.<bits>.kpre.<layer>     [H, 2**bits]            levels of pre-RoPE keys (per channel, normalized)
    kvquant.<bits>.v.<layer>        [H, 2**bits]            levels of values (per token, normalized)
    cq.<bits>x<c>.k.<layer>         [H, d/c, 2**(bits*c), c] centroids of c-channel key groups
    cq.<bits>x<c>.v.<layer>         [H, d/c, 2**(bits*c), c] same for values

A calibrated codebook lives outside the cache (one copy per model), so ``nbytes`` does not
count it; without one the stages fit a codebook on the cache itself and count it.
:class:`CodebookSamples` collects, from full caches of calibration text, what the fits need:
normalized inlier values (KVQuant) and raw rows (coupled quantization), subsampled per head.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kvstack.errors import InputError
from kvstack.kv import KVCache
from kvstack.registry import Stage
from kvstack.stages.common.rope import Rotary
from kvstack.stages.lowrank.calibration import CalibratedBasis, basis_paths, load_basis
from kvstack.stages.quant.codebook import fit_centroids, fit_levels, stride_sample
from kvstack.stages.quant.nuq import normalize

KIND = "quant-codebooks"
KVQUANT_FIT = (2, 3, 4)
CQ_FIT = ((1, 4), (2, 4))  # (bits per channel, channels per group)


def kvquant_key(bits: int, part: str, layer: int) -> str:
    return f"kvquant.{bits}.{part}.{layer}"


def cq_key(bits: int, channels: int, part: str, layer: int) -> str:
    return f"cq.{bits}x{channels}.{part}.{layer}"


def load_codebooks(path: str, fingerprint: str, what: str) -> CalibratedBasis:
    """The codebook file ``path`` (checked against the cache's model); InputError says how to make one."""
    st, js = basis_paths(path)
    if not st.is_file() or not js.is_file():
        raise InputError(
            f"{what}: calibration file {st} (and .json) does not exist; make one with `kvstack calibrate "
            f"--codebooks --model MODEL --out {st.with_suffix('')}`, or drop calibration= to fit on the cache itself"
        )
    book = load_basis(path)
    if book.description.get("kind") != KIND:
        raise InputError(f"{what}: {js} holds low-rank bases, not codebooks: calibrate with --codebooks")
    book.check_model(fingerprint, what)
    return book


def codebook(book: CalibratedBasis, key: str, shape: tuple[int, ...], what: str) -> torch.Tensor:
    """One tensor of a codebook file, checked against the shape the cache needs."""
    t = book.get(key, what)
    if tuple(t.shape) != shape:
        raise InputError(f"{what}: '{key}' in {book.source} has shape {tuple(t.shape)}, the cache needs {shape}")
    return t


@dataclass
class CodebookSamples:
    """Per (part, layer): KVQuant's normalized inliers ``[H]`` lists and raw rows ``[H, n, d]``, subsampled."""

    sink: int = 1
    outliers: float = 0.01
    per_head: int = 1 << 13  # samples kept per head, layer and part from each sequence
    nuq: dict[str, list[list[torch.Tensor]]] = field(default_factory=dict)
    rows: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    tokens: int = 0
    sequences: int = 0

    def add(self, cache: KVCache, rope: dict[int, Rotary] | None) -> None:
        """Add a full (uniform) cache; keys are un-rotated with ``rope`` for KVQuant's pre-RoPE codebooks."""
        for i, layer in enumerate(cache.layers):
            if not layer.uniform:
                raise InputError("calibrate on full caches (identity recipe): every head needs every token")
            pos = layer.row_positions()
            keep = pos >= self.sink
            h = layer.num_heads
            segments = tuple(int(c) for c in keep.view(h, -1).sum(1))
            k, v = layer.keys.decode()[keep].float(), layer.values.decode()[keep].float()
            kpre = k if rope is None else rope[i].unrotate(k, pos[keep])
            kname = "k" if rope is None else "kpre"
            for part, x, axis in ((kname, kpre, "channel"), ("v", v, "token")):
                norm = normalize(x, segments, axis, self.outliers)
                heads = zip(torch.split(norm.u, segments), torch.split(norm.inlier, segments), strict=True)
                picked = [stride_sample(u[m][None], self.per_head, 1)[0] for u, m in heads]
                self.nuq.setdefault(f"{part}.{i}", []).append(picked)
            for part, x in (("k", k), ("v", v)):
                rows = stride_sample(x.view(h, -1, x.shape[1]), self.per_head, 1)
                self.rows.setdefault(f"{part}.{i}", []).append(rows)
        self.tokens += cache.context_length
        self.sequences += 1

    def tensors(self) -> dict[str, torch.Tensor]:
        """Fit every codebook listed in the module doc (``KVQUANT_FIT`` and ``CQ_FIT`` settings)."""
        if not self.sequences:
            raise InputError("no calibration sequences were added")
        out = {}
        for key, seqs in self.nuq.items():
            part, layer = key.split(".")
            per_head = [torch.cat([s[h] for s in seqs]) for h in range(len(seqs[0]))]
            for bits in KVQUANT_FIT:
                levels = [fit_levels(u[None], 1 << bits)[0] for u in per_head]
                out[kvquant_key(bits, part, int(layer))] = torch.stack(levels).to(torch.float16)
        for key, seqs in self.rows.items():
            part, layer = key.split(".")
            x = torch.cat(seqs, dim=1)  # [H, N, d]
            h, n, d = x.shape
            for bits, c in CQ_FIT:
                if d % c:
                    continue
                groups = x.view(h, n, d // c, c).permute(0, 2, 1, 3).reshape(h * (d // c), n, c)
                cent = fit_centroids(groups, 1 << (bits * c))
                out[cq_key(bits, c, part, int(layer))] = cent.view(h, d // c, -1, c).to(torch.float16)
        return out


def describe(info, samples: CodebookSamples, source: str, pre_rope: bool) -> dict:
    """The JSON description of a codebook file."""
    import datetime

    return {
        "kind": KIND,
        "model_fingerprint": info.fingerprint,
        "model_type": info.model_type,
        "num_layers": info.num_layers,
        "num_kv_heads": info.num_kv_heads,
        "head_dim": info.head_dim,
        "pre_rope": pre_rope,
        "sink": samples.sink,
        "outliers": samples.outliers,
        "kvquant_bits": list(KVQUANT_FIT),
        "cq": [f"{b}x{c}" for b, c in CQ_FIT],
        "calibration": {"source": source, "tokens": samples.tokens, "sequences": samples.sequences},
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


class CalibratedStage(Stage):
    """A stage whose codebooks come from ``calibration=FILE`` when given (checked against the cache's model)."""

    calibration: str

    def validate(self) -> None:
        self._book: CalibratedBasis | None = None

    def check_context(self, cache: KVCache) -> None:
        if self.calibration:
            self._book = load_codebooks(self.calibration, cache.model_fingerprint, self.spec())

    def calibrated(self, key: str, shape: tuple[int, ...]) -> torch.Tensor | None:
        """The calibrated codebook ``key`` (None without ``calibration=``: fit on the cache)."""
        if not self.calibration:
            return None
        if self._book is None:  # applied without a recipe (no check_context): no model to check against
            self._book = load_codebooks(self.calibration, "", self.spec())
        return codebook(self._book, key, shape, self.spec())

    def codebook_note(self) -> str:
        """What ``layer.meta["codebook"]`` records: where the codebooks came from and whether they are counted."""
        if self.calibration:
            return f"calibrated ({self.calibration}; shared by the model's caches, not counted)"
        return "fitted on this cache (counted in nbytes)"
