"""Declarations of the low-rank (``svd``, ``latent``) and cross-layer (``minicache``, ``xkv``) stages.

Implementations: :mod:`kvstack.stages.lowrank.svd` and :mod:`kvstack.stages.crosslayer.share`.
Sizes: :mod:`kvstack.grammar.sizes`.
"""

from __future__ import annotations

from typing import Any

from kvstack.errors import RecipeError
from kvstack.grammar import sizes
from kvstack.grammar.params import (
    PACKED_BITS,
    TARGETS,
    Param,
    check_bits,
    check_exact_sink,
    check_rank_or_energy,
    rank_or_energy_shorthand,
)
from kvstack.grammar.spec import StageSpec

LOWRANK_ROPE_MODES = ("post", "pre")

RANK = Param("rank", int, 0, "directions kept (0: choose by energy=)")
ENERGY = Param("energy", float, 0.0, "share of the energy kept, in (0, 1]; picks the smallest rank that keeps it")
SINK = Param("sink", int, 4, "first tokens kept exact (attention sinks) and left out of the basis fit")
BITS = Param(
    "bits", int, 0, f"quantize the coefficients to {'/'.join(map(str, PACKED_BITS))} bits per channel (0: keep)"
)
QGROUP = Param("qgroup", int, 64, "tokens sharing one coefficient scale when bits is set")
BASIS = Param(
    "basis", str, "", "calibrated basis file from `kvstack calibrate` (not counted in the cache); empty: fit here"
)


def check_lowrank(s: Any) -> None:
    """What svd, latent and xkv share: rank or energy, coefficient bits, exact sink tokens."""
    check_rank_or_energy(s.name, s.rank, s.energy)
    check_bits(s.name, s.bits, s.qgroup)
    check_exact_sink(s.name, s.sink)


def _check_svd(s: Any) -> None:
    check_lowrank(s)
    if s.target not in TARGETS:
        raise RecipeError(f"svd: target={s.target!r} is not one of {', '.join(TARGETS)} (e.g. target=kv)")
    if s.rope not in LOWRANK_ROPE_MODES:
        raise RecipeError(f"svd: rope={s.rope!r} is not one of {', '.join(LOWRANK_ROPE_MODES)} (default post)")


def _check_xkv(s: Any) -> None:
    if not isinstance(s.group, int) or s.group < 1:
        raise RecipeError(f"xkv: group={s.group} must be >= 1 layers (2 shares coefficients between pairs)")
    check_lowrank(s)
    if s.target not in TARGETS:
        raise RecipeError(f"xkv: target={s.target!r} is not one of {', '.join(TARGETS)}")


def _check_minicache(s: Any) -> None:
    if not (0.0 <= s.start < 1.0):
        raise RecipeError(
            f"minicache: start={s.start} must be in [0, 1): the share of depth where merging starts "
            "(0.5 merges layer pairs from the middle down; 0 merges from the first layer)"
        )
    if not (0.0 <= s.t <= 1.0):
        raise RecipeError(
            f"minicache: t={s.t} must be in [0, 1]: an angular distance arccos(cos)/pi "
            "(0 merges only identical directions, 0.5 merges up to orthogonal ones)"
        )
    if not (0.0 <= s.w <= 1.0):
        raise RecipeError(f"minicache: w={s.w} must be in [0, 1] (0.5 is the midpoint of the two directions)")
    check_exact_sink(s.name, s.sink)


SPECS: tuple[StageSpec, ...] = (
    StageSpec(
        "svd", "lowrank",
        "PALU-like low rank: per-head SVD basis of K/V, r coefficients per row (basis counted; basis=FILE: "
        "calibrated, not counted)",
        (
            RANK,
            ENERGY,
            Param("target", str, "kv", "which rows to project: kv | k | v"),
            Param("rope", str, "post", "keys projected after RoPE (post, as cached) or before it (pre)"),
            SINK,
            BITS,
            QGROUP,
            BASIS,
        ),
        rank_or_energy_shorthand, _check_svd, sizes.svd,
    ),
    StageSpec(
        "latent", "lowrank", "MHA2MLA-like latent: one basis per layer for all heads' K and V, one r-vector per token",
        (RANK, ENERGY, SINK, BITS, QGROUP, BASIS), rank_or_energy_shorthand, check_lowrank, sizes.latent,
    ),
    StageSpec(
        "minicache", "crosslayer",
        "MiniCache: adjacent deep layers share each token's SLERP direction, keep their own magnitudes",
        (
            Param("start", float, 0.5, "first merged layer as a share of depth, in [0, 1) (0.5: from the middle)"),
            Param("t", float, 0.15, "angular distance arccos(cos)/pi above which a token stays unmerged, in [0, 1]"),
            Param("w", float, 0.5, "SLERP weight toward the deeper layer, in [0, 1]"),
            Param("sink", int, 4, "first tokens never merged (attention sinks)"),
        ),
        check=_check_minicache, size=sizes.minicache,
    ),
    StageSpec(
        "xkv", "crosslayer", "xKV: one SVD over a group of adjacent layers; per-token coefficients shared by the group",
        (
            Param("group", int, 2, "adjacent layers sharing one set of coefficients"),
            RANK,
            ENERGY,
            Param("target", str, "kv", "which rows to compress: kv | k | v"),
            SINK,
            BITS,
            QGROUP,
        ),
        rank_or_energy_shorthand, _check_xkv, sizes.xkv,
    ),
)
