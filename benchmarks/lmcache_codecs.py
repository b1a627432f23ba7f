"""LMCache's serializers against kvstack's, on the same real KV chunks (run in .venv-lmcache).

SmolLM2-135M reads a Paul Graham essay; its KV is cut into LMCache chunks of 256 tokens,
``[2, 30 layers, 256, 3 heads x 64]`` in bf16 (what a serving engine hands LMCache). Each codec
encodes and decodes every chunk; the table gives the bytes stored per chunk, how many times
smaller than the bf16 chunk, encode and decode MB/s of bf16 KV on one core (CPU time of this
process, one torch/numba thread: on a shared machine wall time also counts waiting for a core),
and the relative error of the reloaded KV (``|x' - x| / |x|`` over the chunk, keys and values
apart, the larger). Rows:

* LMCache ``fp8`` (``lmcache.v1.distributed.serde.fp8``) - the storage layer's built-in serde;
* LMCache CacheGen (``lmcache.v1.storage_backend.naive_serde``; its bins for a 30-layer model);
* kvstack's ``kvstack`` serde per recipe: the exact-size frame ``fs``/``resp`` store;
* the same frames through kvstack's ``plugin`` adapter coding (colzstd), what it stores.

    .venv-lmcache/bin/python benchmarks/lmcache_codecs.py               # 4 chunks (1024 tokens)
    .venv-lmcache/bin/python benchmarks/lmcache_codecs.py --chunks 8 --essay worked

``--accuracy`` scores fp8, CacheGen, kvstack int4 and int8 on RULER needles instead
(``lmcache_accuracy.py`` says how): SmolLM2 in bf16, greedy answers of at most 10 tokens.

    .venv-lmcache/bin/python benchmarks/lmcache_codecs.py --accuracy --n 10 --length 2048
"""

from __future__ import annotations

import os

os.environ.setdefault("NUMBA_NUM_THREADS", "1")  # CacheGen's numba kernels: one core, like the others

import argparse  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

CHUNK = 256
KVSTACK_RECIPES = ("int8", "int4", "int4:token,norot", "int2:rot,clip=0.75", "kivi:2,residual=0")


class Obj:
    """The one thing LMCache's serializers read and write: ``.tensor`` (plus ``parent`` for CacheGen)."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor

    def parent(self):
        return None


def real_chunks(n: int, essay_name: str) -> tuple[list[torch.Tensor], int]:
    import kvstack
    from kvstack.eval.texts import essay
    from kvstack.integrations.lmcache.chunks import to_chunks
    from kvstack.zoo import load

    model, tok = load("smollm2-135m")
    ids = tok(essay(essay_name), return_tensors="pt").input_ids[0][: n * CHUNK]
    if ids.numel() < n * CHUNK:
        raise SystemExit(f"essay {essay_name!r} has {ids.numel()} tokens; ask for fewer --chunks")
    cache = kvstack.compress(model, ids, recipe="identity")
    return to_chunks(cache, CHUNK, torch.bfloat16), int(cache.layers[0].keys.shape[1])


def codecs(head_dim: int, layers: int, model_dir: str, hidden: int, recipes=KVSTACK_RECIPES,
           plugin: bool = True) -> dict:
    """name -> (encode(chunk) -> stored bytes object, size(stored) -> int, decode(stored, like) -> chunk)."""
    from lmcache.v1.distributed.serde.fp8 import Fp8QuantizationDeserializer, Fp8QuantizationSerializer
    from lmcache.v1.storage_backend.naive_serde.cachegen_decoder import CacheGenDeserializer
    from lmcache.v1.storage_backend.naive_serde.cachegen_encoder import CacheGenSerializer

    from kvstack.integrations.lmcache.chunk_codec import ChunkCodec, layout_of
    from kvstack.integrations.lmcache.packing import pack, unpack

    out = {}
    fp8_s, fp8_d = Fp8QuantizationSerializer(), Fp8QuantizationDeserializer()

    def fp8_encode(x):
        dst = torch.empty(x.numel(), dtype=torch.uint8)
        n = fp8_s.serialize(Obj(x), Obj(dst), None)
        return dst[:n]

    def fp8_decode(blob, like):
        dst = torch.empty_like(like)
        fp8_d.deserialize(Obj(blob), Obj(dst), None)
        return dst

    out["LMCache fp8 (e4m3)"] = (fp8_encode, lambda b: b.numel(), fp8_decode)
    meta = SimpleNamespace(model_name=model_dir, kv_shape=(layers, 2, CHUNK, hidden // head_dim, head_dim),
                           kv_dtype=torch.bfloat16)
    cg_s = CacheGenSerializer(SimpleNamespace(chunk_size=CHUNK), meta)
    cg_d = CacheGenDeserializer(SimpleNamespace(chunk_size=CHUNK), meta)
    out["LMCache CacheGen"] = (lambda x: cg_s.serialize(Obj(x)), lambda b: len(b.byte_array),
                               lambda b, like: cg_d.deserialize(b).tensor)
    for recipe in recipes:
        codec = ChunkCodec(recipe, head_dim=head_dim)

        def decode(frame, like, codec=codec):
            return codec.decode(frame, torch.empty_like(like))

        out[f"kvstack {recipe}"] = (codec.encode, len, decode)
        if recipe == "int4" and plugin:
            def packed_encode(x, codec=codec):
                return pack(codec.encode(x))

            def packed_decode(blob, like, codec=codec):
                frame = np.empty(codec.check(layout_of([like.shape], [like.dtype])), dtype=np.uint8)
                unpack(blob, frame)
                return codec.decode(torch.from_numpy(frame), torch.empty_like(like))

            out[f"kvstack {recipe} + plugin colzstd"] = (packed_encode, len, packed_decode)
    return out


def rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return max(float((got[i].float() - want[i].float()).norm() / want[i].float().norm()) for i in (0, 1))


def measure(name, fns, chunks) -> dict:
    encode, size, decode = fns
    decode(encode(chunks[0]), chunks[0])  # warm-up: numba compiles, templates are built
    t = time.process_time()
    stored = [encode(c) for c in chunks]
    enc = time.process_time() - t
    t = time.process_time()
    back = [decode(s, c) for s, c in zip(stored, chunks, strict=True)]
    dec = time.process_time() - t
    mb = sum(c.numel() * c.element_size() for c in chunks) / 1e6
    per_chunk = sum(size(s) for s in stored) / len(chunks)
    return {"codec": name, "bytes": per_chunk, "ratio": chunks[0].numel() * 2 / per_chunk,
            "enc": mb / enc, "dec": mb / dec, "err": max(rel_error(b, c) for b, c in zip(back, chunks, strict=True))}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def accuracy(args) -> None:
    """The ``--accuracy`` table (see lmcache_accuracy.py): same chunks of each RULER sample, every codec."""
    import lmcache
    import transformers
    from lmcache_accuracy import prompts, run, table  # this script's folder

    from kvstack.zoo import load

    model, tok = load("smollm2-135m", dtype=torch.bfloat16)
    items = prompts(tok, args.tasks, args.n, args.length, args.seed)
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    table_codecs = codecs(head_dim, cfg.num_hidden_layers, os.path.expanduser("~/.cache/kvstack/smollm2-135m/hf"),
                          cfg.num_key_value_heads * head_dim, recipes=("int4", "int8"), plugin=False)
    start = time.time()
    tallies = run(model, tok, table_codecs, items, args.max_new_tokens, progress=print)
    contexts = [int(p.context_ids.numel()) for _, p in items]
    print(f"\nSmolLM2-135M-Instruct in bf16; tasks {', '.join(args.tasks)}, n = {args.n} each ({len(items)} samples), "
          f"length {args.length} (contexts {min(contexts)}-{max(contexts)} tokens), seed {args.seed}; "
          f"chunks of {CHUNK} "
          f"tokens through each codec, the rest of the context recomputed; greedy, at most {args.max_new_tokens} new "
          f"tokens, scored by the task's `contains`. CPU: {cpu_name()}, {torch.get_num_threads()} torch threads; "
          f"lmcache {lmcache.__version__}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"numpy {np.__version__}; {time.time() - start:.0f} s\n")
    print(table(tallies))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, default=4, help="chunks of 256 tokens (default 4)")
    parser.add_argument("--essay", default="founders", help="bundled essay (default founders)")
    parser.add_argument("--accuracy", action="store_true", help="RULER accuracy per codec instead of speed")
    parser.add_argument("--n", type=int, default=10, help="--accuracy: samples per task (default 10)")
    parser.add_argument("--length", type=int, default=2048, help="--accuracy: sample length in tokens (default 2048)")
    parser.add_argument("--tasks", nargs="+", default=["ruler_niah_single_2", "ruler_niah_multikey_1"],
                        help="--accuracy: tasks (default ruler_niah_single_2 ruler_niah_multikey_1)")
    parser.add_argument("--seed", type=int, default=0, help="--accuracy: sample seed (default 0)")
    parser.add_argument("--max-new-tokens", type=int, default=10, help="--accuracy: answer length (default 10)")
    args = parser.parse_args()
    if args.accuracy:
        from kvstack.errors import KvstackError

        try:
            accuracy(args)
        except KvstackError as exc:
            raise SystemExit(f"error: {exc}") from exc
        return
    torch.set_num_threads(1)
    import lmcache

    chunks, head_dim = real_chunks(args.chunks, args.essay)
    # CacheGen reads the layer count from a Hugging Face folder: the one load("smollm2-135m") wrote
    model_dir = os.path.expanduser("~/.cache/kvstack/smollm2-135m/hf")
    all_codecs = codecs(head_dim, chunks[0].shape[1], model_dir, chunks[0].shape[3])
    rows = [measure(name, fns, chunks) for name, fns in all_codecs.items()]
    print(f"SmolLM2-135M, essay '{args.essay}', {args.chunks} chunks of {CHUNK} tokens "
          f"{list(chunks[0].shape)} bf16 ({chunks[0].numel() * 2} bytes); CPU: {cpu_name()}, "
          f"1 thread; lmcache {lmcache.__version__}, torch {torch.__version__}, numpy {np.__version__}\n")
    print("| codec | bytes / chunk | x smaller than bf16 | encode MB/s/core | decode MB/s/core | rel. error |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['codec']} | {r['bytes']:,.0f} | {r['ratio']:.2f} | {r['enc']:.1f} | {r['dec']:.1f} | "
              f"{r['err']:.4f} |")


if __name__ == "__main__":
    main()
