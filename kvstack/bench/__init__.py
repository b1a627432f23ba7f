"""kvstack as a system under measurement: ``kvstack bench ttft`` (time to first token over a shaped
link, :mod:`kvstack.bench.ttft`) and bandwidth adaptation (:mod:`kvstack.bench.adapt`).

Submodules import torch; this package itself does not, so the CLI parser stays light.
"""
