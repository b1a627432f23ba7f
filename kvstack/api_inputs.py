"""Checks of what users pass to :func:`kvstack.compress` / :func:`kvstack.generate`, one sequence or a batch.

Every refusal is a typed error (:mod:`kvstack.errors`) that says what to pass instead, raised
before any model work so nothing is lost. A *batch* is a list (or tuple) whose items are
themselves id sequences; a single tensor, a list of ints or a ``[1, T]`` tensor is one
sequence, as it always was.
"""

from __future__ import annotations

import torch

from kvstack.errors import InputError, ModelError
from kvstack.kv import KVCache

TOKENIZE_EXAMPLE = 'ids = tokenizer("some text", return_tensors="pt").input_ids[0]'


def as_ids(ids, what: str) -> torch.Tensor:
    """One sequence of token ids as a 1-D int64 tensor (on the device it came on)."""
    if ids is None:
        raise InputError(f"{what} is missing: pass token ids (a list of ints or a 1-D/[1, T] tensor)")
    if isinstance(ids, (str, bytes)) or hasattr(ids, "keys"):
        got = "text" if isinstance(ids, (str, bytes)) else f"a {type(ids).__name__} (the tokenizer's whole output)"
        raise InputError(f"{what} must be token ids, not {got}: tokenize first, e.g. {TOKENIZE_EXAMPLE}")
    try:
        t = torch.as_tensor(ids)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(
            f"{what} must be token ids (a list of ints or a 1-D tensor), not {type(ids).__name__}: tokenize "
            f"first, e.g. {TOKENIZE_EXAMPLE}"
        ) from exc
    if t.dim() == 2:
        if t.shape[0] != 1:
            raise InputError(
                f"{what} has batch size {t.shape[0]}; a tensor is one sequence - pass a batch as a list of "
                "sequences ([ids_1, ..., ids_B], each its own length, no padding)"
            )
        t = t[0]
    if t.dim() != 1:
        raise InputError(f"{what} must be 1-D token ids (or shape [1, T]); got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise InputError(f"{what} is empty: give at least one token (did the tokenizer get an empty string?)")
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise InputError(f"{what} must hold integer token ids, not {t.dtype}")
    return t.long()


def _is_sequence(item) -> bool:
    if isinstance(item, (list, tuple)):
        return True
    ndim = getattr(item, "ndim", None)  # tensors, numpy arrays: a 0-d one is a single token id
    return isinstance(ndim, int) and ndim >= 1


def is_batch(ids) -> bool:
    """True for ``[ids_1, ..., ids_B]`` (a list or tuple of id sequences); False for one sequence."""
    return isinstance(ids, (list, tuple)) and len(ids) > 0 and all(_is_sequence(x) for x in ids)


def batch_ids(items, what: str) -> list[torch.Tensor]:
    """Each sequence of a batch checked as :func:`as_ids`; a batch spread over devices is refused."""
    out = [as_ids(x, f"{what}[{i}]") for i, x in enumerate(items)]
    devices = sorted({str(t.device) for t in out})
    if len(devices) > 1:
        where = ", ".join(f"{what}[{i}] on {t.device}" for i, t in enumerate(out))
        raise InputError(
            f"the sequences of {what} are on different devices ({where}); a batch runs through one model: "
            "put every sequence on one device (e.g. .cpu())"
        )
    return out


def batch_questions(question_ids, size: int, what: str = "question_ids", optional: bool = False):
    """``question_ids`` for a batch of ``size``: a list of ``size`` id sequences (or None if ``optional``)."""
    if question_ids is None:
        if optional:
            return [None] * size
        raise InputError(f"{what} is missing: pass one question per sequence of the batch (a list of {size})")
    if not is_batch(question_ids):
        raise InputError(
            f"{what} must be a list of {size} questions, one per sequence of the batch (each a list of ints "
            "or a 1-D tensor); a single sequence is not spread over a batch"
        )
    if len(question_ids) != size:
        raise InputError(
            f"{what} has {len(question_ids)} questions but the batch has {size} sequences; pass exactly one "
            "question per sequence, in the batch's order"
        )
    return batch_ids(question_ids, what)


def check_model(model, cache: KVCache, fingerprint: str = "config") -> None:
    """Raise ModelError if ``cache`` was built by a different model (config fingerprint, or config
    and weights when the cache carries a weights fingerprint or ``fingerprint="weights"``)."""
    from kvstack.hf.fingerprint import expected_for

    if not cache.model_fingerprint and fingerprint == "config":
        return
    want = expected_for(model, cache.model_fingerprint, fingerprint)
    if cache.model_fingerprint != want:
        raise ModelError(
            f"this cache was built by another model (fingerprint {cache.model_fingerprint}, this model "
            f"{want}); compress the context again with this model"
        )
