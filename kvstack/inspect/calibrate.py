"""Fit calibrated low-rank bases on text: the model side of ``svd:basis=FILE`` / ``latent:basis=FILE``.

The text is cut into sequences of ``seq_len`` tokens; each is prefilled on its own (so the
bases see positions ``0..seq_len-1`` several times, as contexts will) and its full cache
added to Gram matrices (:class:`~kvstack.stages.lowrank.calibration.GramAccumulator`). The
result is saved as safetensors + JSON tied to the model's fingerprint.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import torch

from kvstack.errors import InputError, ModelError
from kvstack.stages.lowrank.calibration import GramAccumulator, save_basis


def calibration_sequences(
    tokenizer, texts: list[str], tokens: int, seq_len: int
) -> list[torch.Tensor]:
    """Up to ``tokens`` token ids from ``texts`` (in order), as sequences of ``seq_len`` (the last may be shorter)."""
    if tokens < 2 or seq_len < 2:
        raise InputError(f"tokens={tokens} and seq_len={seq_len} must be at least 2")
    out, left = [], tokens
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
        for a in range(0, ids.numel(), seq_len):
            piece = ids[a : a + min(seq_len, left)]
            if piece.numel() < 2:
                break
            out.append(piece)
            left -= piece.numel()
            if left < 2:
                return out
    if not out:
        raise InputError("the calibration text is empty: give files with text (--calibration FILE)")
    return out


@torch.no_grad()
def calibrate(model, sequences: list[torch.Tensor], source: str, rope: bool = True) -> tuple[dict, dict]:
    """Tensors and JSON description of bases fitted on ``sequences`` (see ``lowrank.calibration``)."""
    from kvstack.hf.model import model_info
    from kvstack.hf.prefill import prefill
    from kvstack.inspect.rope import rope_tables

    info = model_info(model)
    tables = None
    if rope:
        try:
            tables = rope_tables(model)
        except ModelError:
            tables = None
    acc = GramAccumulator()
    for ids in sequences:
        pre = prefill(model, info, ids, frozenset())
        acc.add(pre.cache, tables)
    description = {
        "model_fingerprint": info.fingerprint,
        "model_type": info.model_type,
        "num_layers": info.num_layers,
        "num_kv_heads": info.num_kv_heads,
        "head_dim": info.head_dim,
        "pre_rope": tables is not None,
        "calibration": {"source": source, "tokens": acc.tokens, "sequences": acc.sequences},
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    return acc.tensors(info.num_layers, info.num_kv_heads), description


def calibrate_to_file(
    model, tokenizer, out: str | Path, texts: list[str], source: str, tokens: int = 4096, seq_len: int = 1024,
    rope: bool = True,
) -> tuple[Path, Path]:
    """Fit on ``texts`` and write ``out.safetensors`` + ``out.json``."""
    sequences = calibration_sequences(tokenizer, texts, tokens, seq_len)
    tensors, description = calibrate(model, sequences, source, rope)
    return save_basis(out, tensors, description)
