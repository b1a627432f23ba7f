"""Where the kernel tests run: on a CUDA GPU when there is one, else through Triton's interpreter.

The interpreter executes the same kernel source on CPU tensors (numpy underneath), so a
machine without a GPU still checks the kernels' indexing, packing and softmax merging
against the references. Triton reads ``TRITON_INTERPRET`` when a kernel is defined, so
it is set here, before any test imports :mod:`kvstack.kernels.triton_quant`. Without
Triton installed every test here skips, saying so.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

HAS_TRITON = importlib.util.find_spec("triton") is not None
ON_GPU = torch.cuda.is_available()

if HAS_TRITON and not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"

    def _allow_scalar_index() -> None:
        """Let the interpreter use a loaded scalar as a loop bound (NumPy 2 refuses 1-element arrays)."""
        import triton.runtime.interpreter as interp

        original = interp._patch_lang_tensor

        def patched(tensor, scope):
            original(tensor, scope)
            scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

        interp._patch_lang_tensor = patched

    _allow_scalar_index()


@pytest.fixture
def device(monkeypatch) -> torch.device:
    """The device kernel tests run on; on a CPU it lets kvstack.kernels use the interpreter for this test only."""
    if not HAS_TRITON:
        pytest.skip("Triton is not installed (pip install -r requirements-kernels.txt)")
    if not ON_GPU:
        from kvstack import kernels

        monkeypatch.setattr(kernels, "ALLOW_CPU", True)
    return torch.device("cuda" if ON_GPU else "cpu")
