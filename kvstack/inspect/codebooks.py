"""Fit calibrated codebooks for ``kvquant`` and ``cq`` on text: the model side of ``calibration=FILE``.

Like :mod:`kvstack.inspect.calibrate` (same sequences, same safetensors + JSON container tied
to the model's fingerprint), but the full caches feed
:class:`~kvstack.stages.quant.calibration.CodebookSamples` instead of Gram matrices.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kvstack.errors import ModelError
from kvstack.inspect.calibrate import calibration_sequences
from kvstack.stages.lowrank.calibration import save_basis
from kvstack.stages.quant.calibration import CodebookSamples, describe


@torch.no_grad()
def calibrate_codebooks(model, sequences: list[torch.Tensor], source: str) -> tuple[dict, dict]:
    """Tensors and JSON description of codebooks fitted on ``sequences``."""
    from kvstack.hf.model import model_info
    from kvstack.hf.prefill import prefill
    from kvstack.inspect.rope import rope_tables

    info = model_info(model)
    try:
        tables = rope_tables(model)
    except ModelError:
        tables = None  # no RoPE: kvquant must run with rope=post
    samples = CodebookSamples()
    for ids in sequences:
        samples.add(prefill(model, info, ids, frozenset()).cache, tables)
    return samples.tensors(), describe(info, samples, source, tables is not None)


def calibrate_codebooks_to_file(
    model, tokenizer, out: str | Path, texts: list[str], source: str, tokens: int = 4096, seq_len: int = 1024
) -> tuple[Path, Path]:
    """Fit on ``texts`` and write ``out.safetensors`` + ``out.json``."""
    sequences = calibration_sequences(tokenizer, texts, tokens, seq_len)
    tensors, description = calibrate_codebooks(model, sequences, source)
    return save_basis(out, tensors, description)
