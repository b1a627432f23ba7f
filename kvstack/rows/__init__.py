"""The storage layer: containers that hold a layer's key or value rows, and their bit packing.

Everything above builds on this package and it imports nothing of kvstack but
:mod:`kvstack.errors`: the data model (:mod:`kvstack.kv`), the stages that fill the
containers, the wire format that writes them, the GPU kernels that read packed codes and
the Hugging Face glue all depend on it, never on each other's internals.

========================  ===========================================================
``base``                  the :class:`Encoded` protocol every container follows; byte counting
``encoding``              how a container describes itself to the wire (``Parts``, ``WireEncoding``)
``dense``                 :class:`DenseRows`: plain floats
``pack``, ``groups``      ``b``-bit codes packed in ``uint8``; which rows share a scale
``quant``                 :class:`QuantRows`: packed codes + fp16 scales (int8..int2, KIVI's halves)
``split``                 :class:`SplitRows`: quantized rows + a dense residual (KIVI)
``rotate``                :class:`HadamardRows`: rows quantized in a rotated basis
========================  ===========================================================

Each container module declares its wire encoding next to its class (``WIRE``);
:data:`ENCODINGS` lists them, and :mod:`kvstack.wire.encodings` registers that list when it
is imported, so no module has to be imported for its side effects.
"""

from __future__ import annotations

from kvstack.rows import dense, quant, rotate, split
from kvstack.rows.base import Encoded, tensor_nbytes
from kvstack.rows.dense import DenseRows
from kvstack.rows.encoding import WireEncoding
from kvstack.rows.quant import QuantRows
from kvstack.rows.rotate import HadamardRows
from kvstack.rows.split import SplitRows

# The wire encodings of the built-in containers (each kind is a stable name in saved files).
ENCODINGS: tuple[WireEncoding, ...] = (dense.WIRE, quant.WIRE, split.WIRE, rotate.WIRE)

__all__ = [
    "ENCODINGS",
    "DenseRows",
    "Encoded",
    "HadamardRows",
    "QuantRows",
    "SplitRows",
    "WireEncoding",
    "tensor_nbytes",
]
