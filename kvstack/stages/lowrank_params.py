"""Recipe parameters shared by the low-rank and cross-layer stages (rank, energy, coefficient bits).

They are declared in :mod:`kvstack.grammar.lowrank` and :mod:`kvstack.grammar.params`; this module
keeps the old import path.
"""

from __future__ import annotations

from kvstack.grammar.lowrank import BASIS, BITS, ENERGY, QGROUP, RANK, SINK
from kvstack.grammar.params import check_bits, rank_or_energy_shorthand
from kvstack.grammar.params import check_exact_sink as check_sink

__all__ = ["BASIS", "BITS", "ENERGY", "QGROUP", "RANK", "SINK", "check_bits", "check_sink", "rank_or_energy_shorthand"]
