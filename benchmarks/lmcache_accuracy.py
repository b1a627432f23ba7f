"""Accuracy of LMCache's serializers against kvstack's on RULER needles (``lmcache_codecs.py --accuracy``).

What a serving engine does on a cache hit, on the CPU: the context's KV is cut into LMCache
chunks of 256 tokens, ``[2, layers, 256, heads x head_dim]`` in bf16; every full chunk goes through
a serializer and back; the model's cache is rebuilt from the reloaded chunks; the tokens after the
last full chunk (fewer than 256, which LMCache does not store) and the question are prefilled on top
of it, as an engine recomputes them; then the answer is generated greedily and scored with the
task's own scorer (``contains``). Every codec sees the same token ids and the same chunks; the
``full cache`` row is the bf16 KV unchanged, through the same path, and "agrees" counts the samples
whose generated tokens equal its tokens exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from kvstack.integrations.lmcache.chunks import CHUNK, to_chunks, with_chunks

FULL = "full cache (bf16)"


@dataclasses.dataclass
class Tally:
    """One codec's totals over the samples."""

    codec: str
    stored: int = 0  # bytes the serializer wrote for every chunk of every sample
    bf16: int = 0  # the same chunks' bf16 bytes
    right: float = 0.0  # sum of the scorer's ``contains``
    agree: int = 0  # samples whose answer tokens equal the full cache's
    n: int = 0
    answers: list[str] = dataclasses.field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.bf16 / self.stored if self.stored else float("nan")


def prompts(tokenizer, tasks: list[str], n: int, length: int, seed: int) -> list[tuple]:
    """``(sample, prompt)`` for ``n`` samples of each task; InputError if a context has no full chunk."""
    from kvstack.errors import InputError
    from kvstack.eval.prompt import format_sample
    from kvstack.eval.tasks import get_task

    if n < 1:
        raise InputError(f"n={n}: ask for at least one sample per task")
    out = []
    for name in tasks:
        for sample in get_task(name).samples(tokenizer, length, n, seed=seed):
            prompt = format_sample(tokenizer, sample)
            if prompt.context_ids.numel() < CHUNK:
                raise InputError(f"length {length} gives {name} a context of {prompt.context_ids.numel()} tokens, "
                                 f"less than one LMCache chunk ({CHUNK}); ask for a longer length")
            out.append((sample, prompt))
    return out


def run(model, tokenizer, codecs: dict[str, tuple[Callable, Callable, Callable]], items: list[tuple],
        max_new_tokens: int = 10, progress: Callable[[str], None] | None = None) -> list[Tally]:
    """Score every codec (``name -> (encode, size, decode)``, as ``lmcache_codecs.codecs``) on ``items``."""
    import kvstack
    from kvstack.eval.jobs import answer_fields

    tallies = {name: Tally(name) for name in (FULL, *codecs)}
    for i, (sample, prompt) in enumerate(items):
        stored_tokens = prompt.context_ids.numel() // CHUNK * CHUNK
        prefix = kvstack.compress(model, prompt.context_ids[:stored_tokens], recipe="identity")
        rest = torch.cat([prompt.context_ids[stored_tokens:], prompt.question_ids])
        chunks = to_chunks(prefix, dtype=torch.bfloat16)
        full_ids = None
        for name in tallies:
            if name == FULL:
                back, stored = chunks, sum(c.numel() * c.element_size() for c in chunks)
            else:
                encode, size, decode = codecs[name]
                blobs = [encode(c) for c in chunks]
                back, stored = [decode(b, c) for b, c in zip(blobs, chunks, strict=True)], sum(size(b) for b in blobs)
            ids = kvstack.generate(model, with_chunks(prefix, back), rest, max_new_tokens).tolist()
            full_ids = ids if name == FULL else full_ids
            fields = answer_fields(tokenizer, sample, ids)
            t = tallies[name]
            t.stored += stored
            t.bf16 += sum(c.numel() * 2 for c in chunks)
            t.right += fields["contains"]
            t.agree += ids == full_ids
            t.n += 1
            t.answers.append(fields["prediction"])
        if progress:
            progress(f"sample {i + 1}/{len(items)} ({sample.task}): " + ", ".join(
                f"{name}={tallies[name].answers[-1]!r}" for name in (FULL, *codecs)) + f"; gold {sample.answers}")
    return list(tallies.values())


def table(tallies: list[Tally]) -> str:
    """The markdown table: codec, bytes vs bf16, right answers / n, agreement with the full cache."""
    lines = ["| codec | stored bytes | x smaller than bf16 | right / n | agrees with full cache |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for t in tallies:
        lines.append(f"| {t.codec} | {t.stored:,} | {t.ratio:.2f} | {t.right:g} / {t.n} | {t.agree} / {t.n} |")
    return "\n".join(lines)
