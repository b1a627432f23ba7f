"""Token streams from the corpus files, and the step-indexed batch source the trainer reads.

Batches are a pure function of (seed, step): a DataLoader worker builds step ``i`` from its own
``numpy`` generator seeded with ``[seed, i]``, so a run is reproducible whatever the worker count.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kvstack.errors import InputError
from training.corpus import read_docs
from training.retrieval import TASKS, SampleMaker, TokenStream, VocabTables, make_batch
from training.value_words import harvest


@dataclass
class Streams:
    lm: TokenStream  # every document, end-of-text between them: plain language modelling
    text: TokenStream  # prose documents, paragraph breaks between them: haystacks
    code: TokenStream  # source files: some haystacks are code
    chars: int  # characters of text behind ``lm`` (bits per byte needs it)
    words: list[str]  # open vocabulary of value words from the prose (empty for a pre-tokenized corpus)


def pretokenize(vocab: VocabTables, corpus: Path, out: Path) -> dict:
    """Tokenize a ``*.jsonl.xz`` corpus once (here, on the CPU) into ``out`` (.npz): no GPU time spent on it."""
    docs = read_docs(corpus)
    ids = vocab.encode([d["text"] for d in docs])
    np.savez_compressed(
        out,
        ids=np.concatenate(ids).astype(np.uint16),
        lengths=np.array([len(x) for x in ids], np.int64),
        prose=np.array([d["kind"] == "prose" for d in docs]),
        chars=np.array(sum(len(d["text"]) for d in docs), np.int64),
    )
    return {"docs": len(docs), "tokens": int(sum(len(x) for x in ids))}


def build_streams(vocab: VocabTables, corpus: Path, max_docs: int | None = None) -> Streams:
    """Streams from a pre-tokenized ``.npz`` (fast) or a ``.jsonl.xz`` corpus (tokenized now)."""
    if corpus.suffix == ".npz":
        z = np.load(corpus)
        bounds = np.concatenate([[0], np.cumsum(z["lengths"])])
        flat = z["ids"].astype(np.int32)
        ids = [flat[bounds[i] : bounds[i + 1]] for i in range(len(z["lengths"]))][:max_docs]
        is_prose = list(z["prose"])[:max_docs]
        chars = int(z["chars"]) if max_docs is None else int(z["chars"] * sum(map(len, ids)) / max(1, len(flat)))
        words: list[str] = []
    else:
        docs = read_docs(corpus)[:max_docs]
        ids = vocab.encode([d["text"] for d in docs])
        is_prose = [d["kind"] == "prose" for d in docs]
        chars = sum(len(d["text"]) for d in docs)
        words = harvest(d["text"] for d in docs if d["kind"] == "prose")
    eot = np.array([vocab.eot], np.int32)
    return Streams(
        lm=TokenStream.build(vocab, ids, eot),
        text=TokenStream.build(vocab, [x for x, p in zip(ids, is_prose) if p], vocab.paragraph),
        code=TokenStream.build(vocab, [x for x, p in zip(ids, is_prose) if not p], vocab.paragraph),
        chars=chars,
        words=words,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m training.data --data .kvstack/train``: write train.npz and heldout.npz there."""
    import argparse
    import json

    from tokenizers import Tokenizer

    from training import SHIPPED_DIR

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--data", type=Path, default=Path(".kvstack/train"))
    ap.add_argument("--tokenizer", type=Path, default=SHIPPED_DIR / "tokenizer.json")
    args = ap.parse_args(argv)
    vocab = VocabTables(Tokenizer.from_file(str(args.tokenizer)))
    for split in ("heldout", "train"):
        print(split, json.dumps(pretokenize(vocab, args.data / f"{split}.jsonl.xz", args.data / f"{split}.npz")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def parse_phases(text: str) -> list[tuple[int, int]]:
    """``"256:400,1024:200"`` -> ``[(256, 400), (1024, 200)]`` (sequence length, steps)."""
    out = []
    for part in text.split(","):
        length, steps = part.split(":")
        out.append((int(length), int(steps)))
    return out


def parse_mix(text: str) -> dict[str, float]:
    """``"single:0.2,lookalike:0.3"`` -> task weights for the retrieval rows (normalised when drawn)."""
    mix: dict[str, float] = {}
    for part in text.split(","):
        task, sep, value = part.partition(":")
        task = task.strip()
        try:
            weight = float(value) if sep else None
        except ValueError:
            weight = None
        if weight is None:
            raise InputError(f"--mix: {part!r} is not task:weight (e.g. lookalike:0.3)")
        if task not in TASKS:
            raise InputError(f"--mix: unknown task {task!r}; tasks: {', '.join(TASKS)}")
        mix[task] = weight
        if not weight >= 0:  # also rejects nan
            raise InputError(f"--mix: weight of {task!r} is {value.strip()}; weights must be >= 0")
    if sum(mix.values()) <= 0:
        raise InputError("--mix: every weight is 0; give at least one task a positive weight")
    return mix


def step_lengths(phases: list[tuple[int, int]]) -> list[int]:
    return [length for length, steps in phases for _ in range(steps)]


class StepBatches:
    """Iterable over steps ``[start, len(lengths))``; each item ``(step, ids, answer_mask)`` as torch tensors."""

    def __init__(self, maker: SampleMaker, lm: TokenStream, lengths: list[int], tokens_per_step: int, seed: int,
                 retrieval_fraction: float, start: int = 0, mix: dict[str, float] | None = None):
        self.maker, self.lm, self.lengths, self.mix = maker, lm, lengths, mix
        self.tokens_per_step, self.seed, self.fraction, self.start = tokens_per_step, seed, retrieval_fraction, start

    def batch(self, step: int):
        import torch

        length = self.lengths[step]
        rng = np.random.default_rng([self.seed, step])
        ids, ans = make_batch(self.maker, self.lm, max(1, self.tokens_per_step // length), length, rng, self.fraction,
                              self.mix)
        return step, torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(ans)

    def __iter__(self):
        import torch.utils.data as tud

        info = tud.get_worker_info()
        wid, n = (0, 1) if info is None else (info.id, info.num_workers)
        for step in range(self.start + wid, len(self.lengths), n):
            yield self.batch(step)


def make_loader(batches: StepBatches, workers: int):
    """A DataLoader that yields steps in order (workers take steps round-robin)."""
    import torch
    import torch.utils.data as tud

    class _It(tud.IterableDataset):
        def __iter__(self):
            return iter(batches)

    return tud.DataLoader(_It(), batch_size=None, num_workers=workers, prefetch_factor=4 if workers else None,
                          persistent_workers=False, pin_memory=torch.cuda.is_available())
