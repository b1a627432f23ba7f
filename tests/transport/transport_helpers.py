"""Helpers shared by the transport tests (imported by file name, like tests/hf/hf_reference.py)."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path

import torch

TOKEN = "test-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningServer:
    """A server on its own event loop thread; ``url``, ``store_url``, ``stop()``."""

    def __init__(self, store_url: str, token: str | None, max_bytes: int, settings=None) -> None:
        from kvstack.transport.server import start
        from kvstack.transport.store_url import open_store

        self.store_url = store_url
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner, port = asyncio.run_coroutine_threadsafe(
            start(open_store(store_url), "127.0.0.1", 0, token, max_bytes, settings), self.loop).result(30)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        if not self.thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def leftovers(store_url: str) -> list[str]:
    """Staging debris a store holds: .part files, or Redis blob keys that no cache points at."""
    if not store_url.startswith("redis://"):
        return [p.name for p in (Path(store_url) / ".incoming").glob("*")]
    import redis

    r = redis.Redis.from_url(store_url)
    pointed = {r.hget(k, "blob") for k in r.scan_iter("kvstack:cache:*")}
    return [k.decode() for k in r.scan_iter("kvstack:blob:*")
            if k.split(b":")[-1] not in pointed]


def tiny_llama(seed: int = 0):
    """tests/conftest.py's tiny Llama geometry: 2 layers, 2 KV heads of dim 16."""
    import transformers as tf

    config = tf.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2, bos_token_id=1,
        eos_token_id=2, pad_token_id=0,
    )
    torch.manual_seed(seed)
    return tf.LlamaForCausalLM(config).to(torch.float32).eval()
