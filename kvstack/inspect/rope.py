"""Read a transformers model's rotary embedding as plain :class:`~kvstack.stages.common.rope.Rotary` tables.

The low-rank stages never touch a model; this is the model side of ``svd:rope=pre`` (and of
the pre-RoPE ranks ``kvstack inspect`` reports). Pass the result to a stage as
``ctx.captures["rope"]``. Models whose frequencies change with the sequence length
(``dynamic``, ``longrope``) are refused: one table would not describe every position.
"""

from __future__ import annotations

from kvstack.errors import ModelError
from kvstack.stages.common.rope import Rotary

_LENGTH_DEPENDENT = ("dynamic", "longrope")


def _rotary_module(model):
    for _, module in model.named_modules():
        if type(module).__name__.endswith("RotaryEmbedding"):
            return module
    raise ModelError(
        f"{type(model).__name__} has no rotary embedding module (no RoPE?): pre-RoPE projection does not "
        "apply; use rope=post"
    )


def rope_tables(model) -> dict[int, Rotary]:
    """``layer -> Rotary`` with the inverse frequencies and scaling each layer's keys were rotated with."""
    from kvstack.hf.model import model_info

    info = model_info(model)
    rotary = _rotary_module(model)
    kinds = rotary.rope_type if isinstance(rotary.rope_type, dict) else {None: rotary.rope_type}
    bad = sorted(str(k) for k in kinds.values() if k in _LENGTH_DEPENDENT)
    if bad:
        raise ModelError(
            f"{type(model).__name__} uses {', '.join(bad)} RoPE, whose frequencies depend on the sequence length; "
            "pre-RoPE projection is not supported for it: use rope=post"
        )
    layer_types = getattr(model.config.get_text_config(decoder=True), "layer_types", None) or [None] * info.num_layers
    made: dict[str | None, Rotary] = {}
    tables = {}
    for i in range(info.num_layers):
        kind = layer_types[i] if getattr(rotary, f"{layer_types[i]}_inv_freq", None) is not None else None
        if kind not in made:
            inv = getattr(rotary, f"{kind}_inv_freq") if kind else rotary.inv_freq
            scaling = getattr(rotary, f"{kind}_attention_scaling") if kind else rotary.attention_scaling
            made[kind] = Rotary(inv_freq=inv.detach().float().cpu().clone(), scaling=float(scaling))
        tables[i] = made[kind]
    return tables
