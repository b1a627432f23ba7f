"""Split a (context, question) pair into token ids the way a chat model expects them.

The context is compressed once; the question comes after it. For chat models the
template wraps both in one user turn, so we render the template around a marker and
cut there: everything before the marker is the context prefix, the rest (question,
end of turn, assistant header) is the question part.
"""

from __future__ import annotations

import torch

from kvstack.errors import InputError

_MARK = "\u2063KVSTACK_QUESTION\u2063"


def split_prompt(
    tokenizer, context: str, question: str, verbatim: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(context_ids, question_ids)`` as 1-D tensors.

    ``verbatim`` keeps a benchmark's own wording: the question follows the context after one
    newline, with no "Question:"/"Answer:" framing added (RULER's prompts carry their own).
    """
    if not context.strip():
        raise InputError("the context is empty: give a file with text (--context-file)")
    if not question.strip():
        raise InputError("the question is empty: pass --question 'What ...?'")
    if getattr(tokenizer, "chat_template", None):
        content = f"{context.strip()}\n{_MARK}" if verbatim else f"{context.strip()}\n\n{_MARK}"
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
        head, _, tail = text.partition(_MARK)
        q_text = (question.strip() if verbatim else f"Answer briefly. Question: {question.strip()}") + tail
    elif verbatim:
        head, q_text = context, f"\n{question.strip()}"
    else:
        head, q_text = context, f"\n\nQuestion: {question.strip()}\nAnswer:"
    ctx = tokenizer(head, add_special_tokens=False, return_tensors="pt").input_ids[0]
    q = tokenizer(q_text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    return ctx, q
