"""Mixed precision by layer, found by measurement: which layers tolerate few bits.

``diagnose`` quantizes one layer at a time at each candidate width, measures how far the
model's next-token distribution over a held-out continuation moves (KL to the full
cache), then picks per-layer widths that fit a byte budget with the least total damage.
"""

from kvstack.diagnose.allocate import Allocation, allocate, compose_recipe
from kvstack.diagnose.sensitivity import Probe, Sensitivity, measure

__all__ = ["Allocation", "Probe", "Sensitivity", "allocate", "compose_recipe", "measure"]
