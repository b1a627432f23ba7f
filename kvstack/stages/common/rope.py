"""Rotary position embedding as a stage sees it: a rotation per position that can be undone.

The cache holds keys *after* RoPE. Before RoPE, keys of a head live in a much smaller
subspace (on SmolLM2-135M, 95% of the energy needs ~17 directions instead of ~35), because
the rotation smears every direction over the frequency pairs. A low-rank stage with
``rope=pre`` un-rotates the keys by their positions, projects, and rotates the
reconstruction back when the cache is read.

The rotation follows Hugging Face's ``rotate_half`` convention on the first
``2 * len(inv_freq)`` channels (the rest pass through, as in partial-rotary models), and
``cos``/``sin`` carry the model's ``attention_scaling`` (1 for plain RoPE; YaRN scales both).
The driver provides one :class:`Rotary` per layer in ``ctx.captures[NEED_ROPE]``; the model
side (reading ``inv_freq`` from a transformers model) is :func:`kvstack.inspect.rope.rope_tables`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvstack.grammar.needs import NEED_ROPE  # noqa: F401  (re-exported: layer index -> Rotary)


@dataclass(frozen=True, eq=False)
class Rotary:
    """One layer's RoPE: ``inv_freq [rot/2]`` and the scaling multiplied into cos and sin."""

    inv_freq: torch.Tensor
    scaling: float = 1.0

    @property
    def rotary_dim(self) -> int:
        return 2 * int(self.inv_freq.numel())

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``cos, sin [n, rot]`` as the model computes them (angles in float32, like transformers)."""
        ang = positions.float()[:, None] * self.inv_freq.to(positions.device).float()[None, :]
        emb = torch.cat([ang, ang], dim=-1)
        return (emb.cos() * self.scaling).to(dtype), (emb.sin() * self.scaling).to(dtype)

    def rotate(self, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Apply RoPE to ``rows [n, d]`` at ``positions [n]`` (what the model did to its keys)."""
        return self._turn(rows, positions, inverse=False)

    def unrotate(self, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`rotate`: the transpose of the rotation, divided by the squared scaling."""
        return self._turn(rows, positions, inverse=True)

    def _turn(self, rows: torch.Tensor, positions: torch.Tensor, inverse: bool) -> torch.Tensor:
        rot = self.rotary_dim
        x, rest = rows[:, :rot], rows[:, rot:]
        cos, sin = self.cos_sin(positions.to(rows.device), rows.dtype)
        half = rot // 2
        turned = torch.cat([-x[:, half:], x[:, :half]], dim=-1)
        if inverse:
            out = (x * cos - turned * sin) / (self.scaling**2)
        else:
            out = x * cos + turned * sin
        return torch.cat([out, rest], dim=-1)
