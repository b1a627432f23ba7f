"""kvstack as a system under measurement: ``kvstack bench ttft`` (time to first token over a shaped
link, :mod:`kvstack.bench.ttft`; cells too slow to run derived from measured components,
:mod:`kvstack.bench.derive`), bandwidth adaptation (:mod:`kvstack.bench.adapt`), and random-weight
models of a preset's shape built on the device (:mod:`kvstack.bench.models`).

Submodules import torch; this package itself does not, so the CLI parser stays light.
"""
