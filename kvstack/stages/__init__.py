"""The techniques, one sub-package per family; importing a method module registers its stages.

Layout: ``select/`` (which rows survive), ``quant/`` (rows stored as codes), ``lowrank/``
(rows stored as coefficients on a basis), ``crosslayer/`` (layers that share what they have in
common), ``identity`` (keep everything, or cast), and ``common/`` for the helpers several
families use (RoPE tables, exact rows kept beside another encoding). Inside a family, method
modules hold the registered stages and share the family's helper modules (``select/base.py``,
``select/scores.py``, ...); a method module never imports another method module.

`STAGE_MODULES` is the one list of modules that hold registered stages, in
registration order, as dotted names under this package. `kvstack.stack` loads it
lazily (`load_builtin`) the first time a recipe is parsed. Stage modules import
`kvstack.registry` (`Stage`, `StageContext`, `register`), never `kvstack.stack`, so
no import cycle runs through the registration (tests/test_import_cycles.py). This
package and its family packages import nothing at load time, so importing one helper
module does not pull in every stage. The row containers the
stages fill live beneath them, in `kvstack.rows`; the old `quant_rows`, `quant_pack`,
`quant_split`, `quant_rotate` and `quant_groups` modules here only re-export them, for
older imports.
"""

from __future__ import annotations

from importlib import import_module

STAGE_MODULES: tuple[str, ...] = (
    "identity",  # identity, fp16, bf16, fp32
    "quant.kvquant",  # kvquant
    "quant.cq",  # cq
    "quant.gear",  # gear
    "quant.kivi",  # kivi
    "quant.uniform",  # int8, int4, int3, int2
    "select.streaming",  # streaming
    "select.attention",  # q2c, snapkv, tova, expected
    "select.critical",  # critical
    "select.fastgen",  # fastgen
    "select.h2o",  # h2o
    "select.keys",  # knorm, keydiff, random
    "select.kvzip",  # kvzip
    "select.surprisal",  # surprisal
    "select.merge",  # merge
    "lowrank.svd",  # svd, latent
    "crosslayer.share",  # minicache, xkv
)


def load_builtin() -> None:
    """Import every stage module so that its `@register` classes are in the registry."""
    for name in STAGE_MODULES:
        import_module(f"{__name__}.{name}")
