"""The receiving side of ``kvstack bench ttft``: pull a payload through the shaped link, decode it
as it arrives, and produce the first token - or a whole answer, for accuracy."""

from __future__ import annotations

import time

import torch

from kvstack.bench.link import LoopbackLink
from kvstack.bench.payload import TEXT, Payload
from kvstack.kv import KVCache


class Receiver:
    """The receiving side: pull a payload through the link at a rate and produce the first token."""

    def __init__(self, model, link: LoopbackLink) -> None:
        from kvstack.hf.model import model_info

        self.model, self.link = model, link
        self.fingerprint = model_info(model).fingerprint

    def first_token(self, payload: Payload, key: str, question: torch.Tensor, rate: float | None) -> dict:
        import kvstack
        from kvstack.wire import StreamDecoder

        dec = StreamDecoder(expect_fingerprint=self.fingerprint)
        start = time.perf_counter()
        transfer = self.link.pull(key, rate, dec.feed)
        cache = dec.finish()
        received = time.perf_counter()
        if payload.name == TEXT:
            ids = torch.cat([cache.context_ids.long(), question]).view(1, -1)
            self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False)
        else:
            kvstack.generate(self.model, cache, question, max_new_tokens=1)
        done = time.perf_counter()
        return {"ttft": done - start, "receive": received - start, "answer": done - received, "rate": transfer.rate,
                "bytes": transfer.bytes}


def answer_contains(model, tok, sample, prompt, payload_name: str, cache: KVCache | None, max_new: int) -> float:
    """``contains`` score of one sample's answer from a payload (the text path prefills it all)."""
    import kvstack
    from kvstack.eval.metrics import score

    if payload_name == TEXT:
        ids = torch.cat([prompt.context_ids, prompt.question_ids]).view(1, -1)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, do_sample=False)
        new = out[0, ids.shape[1]:]
    else:
        new = kvstack.generate(model, cache, prompt.question_ids, max_new_tokens=max_new)
    text = tok.decode(new, skip_special_tokens=True).strip()
    return score(text, sample.answers, sample.mode)[1]
