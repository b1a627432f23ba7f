"""The receiving side of ``kvstack bench ttft``: pull a payload through the shaped link, decode it
as it arrives, and produce the first token - or a whole answer, for accuracy."""

from __future__ import annotations

import time
from dataclasses import replace

import torch

from kvstack.kv import KVCache
from kvstack.linkbench.link import LoopbackLink
from kvstack.linkbench.payload import TEXT, Payload


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a timestamp means the work is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Receiver:
    """The receiving side: pull a payload through the link at a rate and produce the first token on
    the model's device (each layer is moved there as soon as the stream completes it)."""

    def __init__(self, model) -> None:
        from kvstack.hf.model import model_info

        self.model = model
        self.fingerprint = model_info(model).fingerprint
        self.device = next(model.parameters()).device

    def receive(self, link: LoopbackLink, key: str, rate: float | None):
        """Pull ``key`` from ``link`` at ``rate`` and decode it as it arrives: ``(cache on the device, transfer)``."""
        from kvstack.linkbench.device import layer_to
        from kvstack.wire import StreamDecoder

        dec = StreamDecoder(expect_fingerprint=self.fingerprint)
        placed: dict[int, object] = {}
        memo: dict = {}

        def feed(piece: bytes) -> None:
            for i, layer in dec.feed(piece):
                placed[i] = layer_to(layer, self.device, memo)

        transfer = link.pull(key, rate, feed)
        cache = dec.finish()
        cache = replace(cache, layers=[placed[i] for i in range(len(cache.layers))])
        synchronize(self.device)
        return cache, transfer

    def first_token(self, payload: Payload, link: LoopbackLink, key: str, question: torch.Tensor,
                    rate: float | None) -> dict:
        import kvstack

        start = time.perf_counter()
        cache, transfer = self.receive(link, key, rate)
        received = time.perf_counter()
        if payload.name == TEXT:
            ids = torch.cat([cache.context_ids.long(), question.cpu()]).view(1, -1).to(self.device)
            self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False)
        else:
            kvstack.generate(self.model, cache, question, max_new_tokens=1)
        synchronize(self.device)
        done = time.perf_counter()
        return {"ttft": done - start, "receive": received - start, "answer": done - received, "rate": transfer.rate,
                "bytes": transfer.bytes}


def answer_contains(model, tok, sample, prompt, payload_name: str, cache: KVCache | None, max_new: int) -> float:
    """``contains`` score of one sample's answer from a payload (the text path prefills it all)."""
    import kvstack
    from kvstack.eval.metrics import score

    device = next(model.parameters()).device
    if payload_name == TEXT:
        ids = torch.cat([prompt.context_ids, prompt.question_ids]).view(1, -1).to(device)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, do_sample=False)
        new = out[0, ids.shape[1]:]
    else:
        from kvstack.linkbench.device import cache_to

        new = kvstack.generate(model, cache_to(cache, device), prompt.question_ids, max_new_tokens=max_new)
    text = tok.decode(new, skip_special_tokens=True).strip()
    return score(text, sample.answers, sample.mode)[1]
