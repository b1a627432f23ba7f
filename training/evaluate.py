"""Held-out measurements taken right after training: retrieval accuracy and perplexity.

Retrieval is scored by greedy exact match of the first answer, computed in one forward pass: greedy
decoding reproduces the answer exactly iff, at every answer position, the argmax given the previous
answer tokens is the next answer token (so teacher forcing gives the same verdict as generating).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from training.retrieval import TASKS, Sample, SampleMaker, TokenStream


@torch.no_grad()
def answer_exact(model, samples: list[Sample], device: str, batch: int = 8) -> list[bool]:
    """Per sample: does greedy decoding after the first question reproduce the first answer exactly?"""
    out: list[bool] = []
    for i in range(0, len(samples), batch):
        chunk = samples[i : i + batch]
        ids = torch.from_numpy(np.stack([s.ids[:-1] for s in chunk]).astype(np.int64)).to(device)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
            pred = model.logits(model(ids)).argmax(-1).cpu().numpy()
        for s, p in zip(chunk, pred):
            _, a, b = s.qa_spans[0]
            out.append(bool((p[a - 1 : b - 1] == s.ids[a:b]).all()))
    return out


def retrieval_accuracy(model, maker: SampleMaker, task: str, length: int, n: int, split: str, seed: int,
                       device: str, batch: int = 8) -> float:
    rng = np.random.default_rng([seed, length, TASKS.index(task), 0 if split == "train" else 1])
    samples = [maker.make(task, length, rng, split=split, qa_format=("\n\nQuestion: ", "\nAnswer:"), bos=True)
               for _ in range(n)]
    return float(np.mean(answer_exact(model, samples, device, batch)))


@torch.no_grad()
def perplexity(model, stream: TokenStream, length: int, n: int, seed: int, device: str, batch: int = 8) -> dict:
    """Mean next-token loss over ``n`` random windows of ``length`` held-out tokens."""
    rng = np.random.default_rng([seed, length])
    starts = rng.integers(0, len(stream) - length - 1, n)
    total, count = 0.0, 0
    for i in range(0, n, batch):
        rows = np.stack([stream.ids[s : s + length + 1] for s in starts[i : i + batch]]).astype(np.int64)
        x = torch.from_numpy(rows).to(device)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
            logits = model.logits(model(x[:, :-1]))
        loss = F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten(), reduction="sum")
        total += float(loss)
        count += x[:, 1:].numel()
    nll = total / count
    return {"tokens": count, "nll": nll, "ppl": math.exp(nll)}
