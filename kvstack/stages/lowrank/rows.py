"""Rows stored as coefficients on a basis, reconstructed when the cache is read.

:class:`LowRankRows` (``svd``): each KV head ``h`` has a basis ``[d, r]``; the cache holds
one ``r``-vector of coefficients per row, as an inner :class:`~kvstack.kv.Encoded`
(``DenseRows`` in the model's dtype, or ``QuantRows`` when the coefficients are quantized).
With ``rope`` set the basis describes keys *before* RoPE, and reading rotates the
reconstruction back to each row's position.

:class:`JointRows` (``latent``, ``xkv``): several *parts* (the keys and values of one layer,
or the keys of several layers) share one coefficient vector per token; each part holds its
own block of the joint basis ``[H*d, r]``.

Bytes are counted where they are held: coefficients + the basis when it was fitted on this
context (``owns_basis``); a calibrated basis lives outside the cache, loaded once per model,
so it is not counted. Shared coefficients are counted by the one part that owns them; a
``select`` (eviction after the stage) makes its own copy, owned and counted, so a cache never
claims a saving it does not have.

Quantizing after a low-rank stage: a quantizer that sees ``has_inner_rows`` should quantize
:meth:`LowRankRows.inner_rows` (the coefficients, ``r`` per row) instead of the
reconstruction (``d`` per row); :func:`kvstack.stages.common.inner.quantize_encoded` is that rule in one call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from kvstack.errors import InputError
from kvstack.kv import DenseRows, Encoded, tensor_nbytes
from kvstack.rows.quant import QuantRows
from kvstack.stages.common.heads import head_counts, segment_aranges
from kvstack.stages.common.rope import Rotary


def encode_coefficients(
    coef: torch.Tensor, bits: int, group: int, segments: Sequence[int], store_dtype: torch.dtype
) -> Encoded:
    """Coefficients as ``DenseRows`` of ``store_dtype`` (``bits=0``) or asymmetric per-channel ``QuantRows``.

    Per channel (tokens grouped within a head), because coefficient channels have very
    different scales: the first direction carries most of the energy.
    """
    if not bits:
        return DenseRows(coef.to(store_dtype).contiguous())
    return QuantRows.quantize(coef.float(), bits, group, "channel", False, segments, out_dtype=torch.float32)


@dataclass(frozen=True, eq=False)
class LowRankRows:
    """Per-head low-rank rows: ``row ~ basis[h] @ coefficient`` (then RoPE when ``rope`` is set)."""

    coefficients: Encoded  # [n, r]
    basis: torch.Tensor  # [H, d, r]
    segments: tuple[int, ...]  # rows per head
    owns_basis: bool
    out_dtype: torch.dtype
    rope: Rotary | None = None
    positions: torch.Tensor | None = None  # int32 [n] (rope only); None: offset + 0..n_h-1 in every head
    position_offset: int = 0

    @property
    def rank(self) -> int:
        return int(self.basis.shape[2])

    # --- Encoded protocol ----------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.coefficients.shape[0]), int(self.basis.shape[1]))

    @property
    def dtype(self) -> torch.dtype:
        return self.out_dtype

    @property
    def nbytes(self) -> int:
        basis = tensor_nbytes(self.basis) if self.owns_basis else 0
        return self.coefficients.nbytes + basis + tensor_nbytes(self.positions)

    def row_positions(self) -> torch.Tensor:
        if self.positions is None:
            return segment_aranges(self.segments) + self.position_offset
        return self.positions.long()

    def decode(self) -> torch.Tensor:
        work = torch.float64 if self.basis.dtype == torch.float64 else torch.float32
        coef = self.coefficients.decode().to(work)
        out = torch.empty(self.shape, dtype=work, device=coef.device)
        start = 0
        for h, n in enumerate(self.segments):
            out[start : start + n] = coef[start : start + n] @ self.basis[h].to(work).mT
            start += n
        if self.rope is not None:
            out = self.rope.rotate(out, self.row_positions())
        return out.to(self.out_dtype)

    def select(self, rows: torch.Tensor) -> LowRankRows:
        """Keep ``rows``: their coefficients (the basis is shared by every row of a head)."""
        rows = rows.long()
        positions = None if self.rope is None else self.row_positions()[rows].to(torch.int32)
        return replace(
            self,
            coefficients=self.coefficients.select(rows),
            segments=head_counts(self.segments, rows),
            positions=positions,
            position_offset=0,
        )

    # --- what a quantizer after this stage should quantize ----------------------------
    has_inner_rows = True

    @property
    def select_requantizes(self) -> bool:
        return bool(getattr(self.coefficients, "select_requantizes", False))

    def inner_rows(self) -> tuple[torch.Tensor, tuple[int, ...]]:
        """The coefficients ``[n, r]`` and rows per head: what to quantize instead of the reconstruction."""
        return self.coefficients.decode(), self.segments

    def with_inner(self, coefficients: Encoded) -> LowRankRows:
        """The same rows with the coefficients stored as ``coefficients`` (e.g. quantized)."""
        if coefficients.shape != self.coefficients.shape:
            raise InputError(f"coefficients of shape {coefficients.shape}; expected {self.coefficients.shape}")
        return replace(self, coefficients=coefficients)


@dataclass(frozen=True, eq=False)
class JointRows:
    """One part of a joint low-rank encoding: ``tokens x (heads*d)`` rows ~ ``coefficients @ block.T``.

    Rows come out head-major, ``[heads * T, d]``, like every KV layer; ``coefficients`` has
    one row per token, shared with the other parts of the group.
    """

    coefficients: Encoded  # [T, r], shared by the parts of a group
    owns_coefficients: bool
    block: torch.Tensor  # [heads * d, r]
    owns_block: bool
    heads: int
    out_dtype: torch.dtype

    @property
    def tokens(self) -> int:
        return int(self.coefficients.shape[0])

    @property
    def head_dim(self) -> int:
        return int(self.block.shape[0]) // self.heads

    # --- Encoded protocol ----------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return (self.heads * self.tokens, self.head_dim)

    @property
    def dtype(self) -> torch.dtype:
        return self.out_dtype

    @property
    def nbytes(self) -> int:
        coef = self.coefficients.nbytes if self.owns_coefficients else 0
        return coef + (tensor_nbytes(self.block) if self.owns_block else 0)

    def decode(self) -> torch.Tensor:
        work = torch.float64 if self.block.dtype == torch.float64 else torch.float32
        flat = self.coefficients.decode().to(work) @ self.block.to(work).mT  # [T, H*d]
        rows = flat.view(self.tokens, self.heads, self.head_dim).transpose(0, 1)
        return rows.reshape(self.shape).to(self.out_dtype)

    def select(self, rows: torch.Tensor) -> Encoded:
        """Keep ``rows``. The same tokens in every head: those tokens' coefficients (an owned copy).

        Different tokens per head cannot share one coefficient vector per token, so the
        kept rows are stored dense (counted in full): put eviction before the joint stage.
        """
        rows = rows.long()
        t = self.tokens
        head, token = rows // t, rows % t
        if rows.numel() % self.heads == 0:
            per = rows.numel() // self.heads
            grid = token.view(self.heads, per) if per else token.view(self.heads, 0)
            heads_ok = bool((head.view(self.heads, per) == torch.arange(self.heads)[:, None]).all())
            if heads_ok and bool((grid == grid[:1]).all()):
                return replace(self, coefficients=self.coefficients.select(grid[0]), owns_coefficients=True)
        return DenseRows(self.decode().index_select(0, rows))
