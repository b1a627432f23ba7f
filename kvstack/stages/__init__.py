"""The techniques, one family per module; importing a module registers its stages.

`STAGE_MODULES` is the one list of modules that hold registered stages, in
registration order. `kvstack.stack` loads it lazily (`load_builtin`) the first
time a recipe is parsed: stage modules import `kvstack.stack` for `Stage` and
`register`, so the registry must not import them at module level. This package
itself imports nothing at load time, so importing one helper module does not
pull in every stage. The row containers the stages fill live beneath them, in
`kvstack.rows`; the old `quant_rows`, `quant_pack`, `quant_split`, `quant_rotate`
and `quant_groups` modules here only re-export them for older imports.
"""

from __future__ import annotations

from importlib import import_module

STAGE_MODULES: tuple[str, ...] = (
    "identity",  # identity, fp16, bf16, fp32
    "quant_kvquant",  # kvquant
    "quant_cq",  # cq
    "quant_gear",  # gear
    "quant_kivi",  # kivi
    "quantize",  # int8, int4, int3, int2
    "select",  # streaming
    "select_attention",  # q2c, snapkv, tova, expected
    "select_critical",  # critical
    "select_fastgen",  # fastgen
    "select_h2o",  # h2o
    "select_keys",  # knorm, keydiff, random
    "select_kvzip",  # kvzip
    "select_surprisal",  # surprisal
    "select_merge",  # merge
    "lowrank",  # svd, latent
    "crosslayer",  # minicache, xkv
)


def load_builtin() -> None:
    """Import every stage module so that its `@register` classes are in the registry."""
    for name in STAGE_MODULES:
        import_module(f"{__name__}.{name}")
