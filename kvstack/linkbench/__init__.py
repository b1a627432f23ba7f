"""The link benchmark behind ``kvstack bench``: what it costs to send a context's cache to another machine.

``kvstack bench ttft`` measures time to first token over a shaped link (:mod:`kvstack.linkbench.ttft`;
cells too slow to run derived from measured components, :mod:`kvstack.linkbench.derive`), with
bandwidth adaptation (:mod:`kvstack.linkbench.adapt`), and random-weight models of a preset's shape
built on the device (:mod:`kvstack.linkbench.models`). Named for what it measures - the wire and
transport path of a cache - not to be confused with the repository's ``benchmarks/`` scripts (quality
and size measurements, not installed). The command users run keeps its name, ``kvstack bench``.

Submodules import torch; this package itself does not, so the CLI parser stays light.
"""
