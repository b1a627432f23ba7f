"""Turn a task :class:`~kvstack.eval.tasks.Sample` into token ids for one model.

Chat models get the template through :func:`kvstack.prompting.split_prompt` (the context is
the cacheable prefix; question, end of turn and assistant header follow), base models a plain
``Question: ... Answer:`` layout after a BOS token. The answer prefix is appended to the
question part either way. Perplexity samples are raw text: no template, no BOS.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvstack.eval.tasks.base import Sample
from kvstack.prompting import split_prompt


@dataclass(frozen=True)
class Prompt:
    context_ids: torch.Tensor  # [T] what is compressed
    question_ids: torch.Tensor  # [q] what follows the compressed context (may be empty for ppl)
    continuation_ids: torch.Tensor | None = None  # [n] scored teacher-forced (ppl tasks)
    answer_ids: torch.Tensor | None = None  # [a] the gold answer after the question, scored teacher-forced


def _ids(tokenizer, text: str) -> torch.Tensor:
    return torch.tensor(tokenizer(text, add_special_tokens=False).input_ids, dtype=torch.long)


def is_chat(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def format_sample(tokenizer, sample: Sample) -> Prompt:
    """Token ids of ``sample`` as this tokenizer's model expects them."""
    if sample.continuation:
        return Prompt(_ids(tokenizer, sample.context), torch.empty(0, dtype=torch.long),
                      _ids(tokenizer, sample.continuation))
    ctx, q = split_prompt(tokenizer, sample.context, sample.question, verbatim=sample.verbatim)
    if not is_chat(tokenizer):
        bos = getattr(tokenizer, "bos_token_id", None)
        if bos is not None and (ctx.numel() == 0 or int(ctx[0]) != bos):
            ctx = torch.cat([torch.tensor([bos], dtype=torch.long), ctx])
    if sample.answer_prefix:
        prefix = sample.answer_prefix if is_chat(tokenizer) else " " + sample.answer_prefix
        q = torch.cat([q, _ids(tokenizer, prefix)])
    gold = sample.answers[0] if sample.mode == "any" else ", ".join(sample.answers)
    space = "" if is_chat(tokenizer) and not sample.answer_prefix else " "
    return Prompt(ctx.long(), q.long(), answer_ids=_ids(tokenizer, space + gold) if gold else None)
