"""Low-rank stages: project keys/values onto a few directions and rebuild them when read.

``svd`` (PALU-like, post-training): per layer and KV head, a basis from the SVD of that
head's keys (and, separately, values); the cache holds ``r`` coefficients per row
(:class:`~kvstack.stages.lowrank.rows.LowRankRows`). ``svd:rank=16`` keeps 16 directions,
``svd:energy=0.95`` (or ``svd:0.95``) the fewest directions that keep 95% of every head's
energy (one rank per layer: the largest any head needs). Options:

* ``basis=FILE``: a basis calibrated once on text (``kvstack calibrate``) instead of one
  fitted on this context. It lives outside the cache, shared by every cache of the model,
  so ``nbytes`` counts only coefficients; fitted per context, the basis (``H x d x r`` per
  layer, K and V) is counted. A file made for another model raises ModelError.
* ``rope=pre``: project keys *before* RoPE (un-rotated by their positions, rotated back
  when read). Pre-RoPE keys are much lower rank (SmolLM2-135M: ~17 vs ~35 directions for
  95%); it needs the driver to hand over the model's rotary tables
  (``ctx.captures["rope"]``, see :mod:`kvstack.stages.common.rope`) and stores each row's
  position (int32) when tokens were evicted first.
* ``sink=4``: rows at positions below 4 stay exact and out of the fit (attention sinks:
  on SmolLM2 this alone turns ``svd:energy=0.99`` from +15% to +1% perplexity; see
  :mod:`kvstack.stages.common.keep`). ``sink=0`` projects every row.
* ``target=k|v|kv``: which of keys/values to project (default both).
* ``bits=4``: quantize the coefficients per channel (``qgroup`` tokens per scale) inside
  the stage; ``svd > int4`` instead quantizes the reconstruction unless the quantizer
  applies :func:`~kvstack.stages.common.inner.quantize_encoded` (see that module).

``latent`` (MHA2MLA idea, no fine-tuning): one basis per layer for the concatenation of all
heads' keys *and* values of a token, ``[2 * H * d]``; the cache holds one ``r``-vector per
token per layer (:class:`~kvstack.stages.lowrank.rows.JointRows`, owned by the keys, shared
by the values). Every head must hold the same tokens: after per-head selection (snapkv, h2o,
q2c, ... score each head on its own) use ``svd``; ``streaming`` keeps the same tokens everywhere.
Evicting after ``latent`` per head stores the kept rows dense (counted).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from kvstack.errors import RecipeError
from kvstack.grammar.params import check_rank_fits
from kvstack.kv import Encoded, KVCache, KVLayer
from kvstack.registry import Stage, StageContext, register
from kvstack.stages.common.heads import same_tokens_every_head, segment_aranges
from kvstack.stages.common.keep import KeptRows, per_head_counts
from kvstack.stages.common.rope import NEED_ROPE, Rotary
from kvstack.stages.lowrank.calibration import CalibratedBasis, load_basis
from kvstack.stages.lowrank.fit import (
    Basis,
    compute_dtype,
    fit_basis,
    rank_for_energy,
)
from kvstack.stages.lowrank.rows import JointRows, LowRankRows, encode_coefficients


class _LowRank(Stage):
    """What ``svd`` and ``latent`` share: rank/energy, coefficient bits, an optional calibrated basis."""

    family = "lowrank"
    rank: int
    energy: float
    sink: int
    bits: int
    qgroup: int
    basis: str

    def validate(self) -> None:
        # rank/energy, bits, sink (and svd's target, rope): checked by kvstack.grammar.lowrank
        self._calibrated: CalibratedBasis | None = None

    def check_context(self, cache: KVCache) -> None:
        if self.basis:
            self._calibrated = load_basis(self.basis)
            self._calibrated.check_model(cache.model_fingerprint, self.spec())

    @property
    def calibrated(self) -> CalibratedBasis | None:
        """The basis file, when ``basis=`` names one (loaded on first use if no recipe checked it)."""
        if self.basis and self._calibrated is None:
            self._calibrated = load_basis(self.basis)
        return self._calibrated

    def choose_rank(self, singular: list[torch.Tensor], dim: int, what: str) -> int:
        """``rank``, or the smallest rank that keeps ``energy`` for every one of the fitted row sets."""
        if self.rank:
            check_rank_fits(self.name, self.rank, dim, what)
            return self.rank
        return max(rank_for_energy(s, self.energy) for s in singular)


@register
class Svd(_LowRank, grammar="svd"):
    target: str
    rope: str

    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset({NEED_ROPE}) if self.rope == "pre" and "k" in self.target else frozenset()

    def _rotary(self, index: int, ctx: StageContext) -> Rotary:
        tables = ctx.captures.get(NEED_ROPE)
        if not tables or index not in tables:
            raise RecipeError(
                "svd:rope=pre needs the model's rotary tables in ctx.captures['rope'] (layer -> Rotary), which "
                "this driver did not provide; use rope=post, or pass kvstack.inspect.rope.rope_tables(model)"
            )
        return tables[index]

    def _bases(self, index: int, part: str, rows: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Basis vectors ``[H, d, d]`` and each head's singular values: calibrated, or fitted on ``rows``."""
        if self.calibrated is not None:
            vectors, singular = self.calibrated.svd(index, part, self.spec())
            if vectors.shape[0] != len(rows) or vectors.shape[1] != rows[0].shape[1]:
                raise RecipeError(
                    f"{self.spec()}: the calibrated basis has {vectors.shape[0]} heads of dim {vectors.shape[1]} "
                    f"in layer {index}, the cache {len(rows)} of dim {rows[0].shape[1]}: calibrate for this model"
                )
            return vectors, list(singular)
        fits = [_fit(r) for r in rows]
        return torch.stack([f.vectors for f in fits]), [f.singular for f in fits]

    def encode(self, index: int, layer: KVLayer, enc: Encoded, part: str, ctx: StageContext) -> Encoded:
        """Project one part of ``layer`` (``k``, ``kpre`` or ``v``); rows at positions ``< sink`` stay exact."""
        all_rows = enc.decode()
        store = all_rows.dtype
        all_pos = layer.row_positions()
        exact = all_pos < self.sink
        lengths = per_head_counts(layer.lengths, exact)
        pos = all_pos[~exact]
        work = all_rows[~exact].to(compute_dtype(store))
        rotary, positions, offset = None, None, 0
        if part == "kpre":
            rotary = self._rotary(index, ctx)
            work = rotary.unrotate(work, pos)
            offset = int(pos[0]) if pos.numel() else 0
            if not torch.equal(pos, segment_aranges(lengths) + offset):
                positions, offset = pos.to(torch.int32), 0
        per_head = list(torch.split(work, list(lengths)))
        vectors, singular = self._bases(index, part, per_head)
        r = self.choose_rank(singular, all_rows.shape[1], "head_dim")
        if self.calibrated is not None:
            basis = vectors[:, :, :r]  # a view of the loaded file: shared by every cache, not copied
        else:
            basis = vectors[:, :, :r].to(store).clone()  # a fresh [H, d, r], so the full fit can be freed
        coef = torch.cat([x @ basis[h].to(x.dtype) for h, x in enumerate(per_head)])
        low = LowRankRows(
            coefficients=encode_coefficients(coef, self.bits, self.qgroup, lengths, store),
            basis=basis,
            segments=lengths,
            owns_basis=self.calibrated is None,
            out_dtype=store,
            rope=rotary,
            positions=positions,
            position_offset=offset,
        )
        return KeptRows.wrap(all_rows, exact, low)

    def apply_layer(self, index: int, layer: KVLayer, ctx: StageContext) -> KVLayer:
        keys, values = layer.keys, layer.values
        if "k" in self.target:
            keys = self.encode(index, layer, keys, "kpre" if self.rope == "pre" else "k", ctx)
        if "v" in self.target:
            values = self.encode(index, layer, values, "v", ctx)
        return replace(layer, keys=keys, values=values)


def _fit(rows: torch.Tensor) -> Basis:
    if rows.shape[0] == 0:  # a head that kept nothing: any orthonormal basis, no energy
        d = rows.shape[1]
        return Basis(torch.eye(d, dtype=rows.dtype), torch.zeros(d, dtype=rows.dtype))
    return fit_basis(rows)


def joint_rows(layer: KVLayer) -> torch.Tensor:
    """``[T, 2*H*d]``: each token's keys of every head, then its values of every head."""
    h, n = layer.num_heads, layer.max_length
    k = layer.keys.decode().reshape(h, n, -1).transpose(0, 1).reshape(n, -1)
    v = layer.values.decode().reshape(h, n, -1).transpose(0, 1).reshape(n, -1)
    return torch.cat([k, v], dim=1)


@register
class Latent(_LowRank, grammar="latent"):

    def apply_layer(self, index: int, layer: KVLayer, ctx: StageContext) -> KVLayer:
        if not same_tokens_every_head(layer):
            raise RecipeError(
                f"{self.spec()}: layer {index} keeps different tokens in different heads (per-head selection), so "
                "one latent vector per token cannot hold them; after per-head selection use svd (per head), or "
                "select with a stage that keeps the same tokens in every head (streaming)"
            )
        store = layer.keys.dtype
        h = layer.num_heads
        exact = layer.row_positions() < self.sink  # the same tokens in every head
        x = joint_rows(layer)[~exact.view(h, -1)[0]].to(compute_dtype(store))
        if self.calibrated is not None:
            basis = self.calibrated.latent(index, self.spec())
            if basis.vectors.shape[0] != x.shape[1]:
                raise RecipeError(
                    f"{self.spec()}: the calibrated latent basis of layer {index} has dim {basis.vectors.shape[0]}, "
                    f"the cache {x.shape[1]} (2 x heads x head_dim): calibrate for this model"
                )
        else:
            basis = _fit(x)
        r = self.choose_rank([basis.singular], x.shape[1], "2 x kv_heads x head_dim")
        half = x.shape[1] // 2
        if self.calibrated is None:  # fresh blocks, so the [2Hd, 2Hd] fit can be freed
            k_block = basis.vectors[:half, :r].to(store).clone()
            v_block = basis.vectors[half:, :r].to(store).clone()
        else:
            k_block, v_block = basis.vectors[:half, :r], basis.vectors[half:, :r]
        full = torch.cat([k_block, v_block]).to(x.dtype)
        coef = encode_coefficients(x @ full, self.bits, self.qgroup, (x.shape[0],), store)
        owned = self.calibrated is None
        keys = KeptRows.wrap(layer.keys.decode(), exact, JointRows(coef, True, k_block, owned, h, store))
        values = KeptRows.wrap(layer.values.decode(), exact, JointRows(coef, False, v_block, owned, h, store))
        return replace(layer, keys=keys, values=values)
