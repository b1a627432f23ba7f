"""Low-rank and cross-layer stages on the real SmolLM2-135M: bytes, reconstruction error, perplexity.

    .venv/bin/python benchmarks/lowrank_sweep.py [--essay worked] [--context 1024] [--continuation 256]

One held-out essay: its first ``--context`` tokens are prefilled once and compressed with each
recipe; the next ``--continuation`` tokens are scored (teacher forcing) through the compressed
cache, so the perplexity delta is what the compression costs on real text. Calibrated bases
are fitted on the *other* essays (``--calib-tokens``). Prints three tables:

1. keys' reconstruction error vs rank, projected after RoPE (as cached) and before it;
2. every recipe: bytes per token, ratio to the dense fp32 cache, K/V relative error, perplexity;
3. the smallest latent/svd rank meeting each perplexity-delta level.

Errors are ``sum ||X_hat - X||^2 / sum ||X||^2`` over all layers and heads. Paste the
tables into benchmarks/RESULTS.md with the date.
"""

from __future__ import annotations

import argparse
import math
import platform
import tempfile
import time
from pathlib import Path

import torch
import transformers

from kvstack.cli import table
from kvstack.errors import KvstackError
from kvstack.eval.texts import essay, essay_names
from kvstack.hf import CompressedCache, enable
from kvstack.hf.compat import cache_kwargs
from kvstack.hf.model import model_info
from kvstack.hf.prefill import prefill
from kvstack.inspect.calibrate import calibrate_to_file
from kvstack.inspect.rope import rope_tables
from kvstack.kv import KVCache
from kvstack.stack import NEED_WINDOW_QUERIES, Recipe, StageContext
from kvstack.stages.common.rope import NEED_ROPE
from kvstack.zoo import load

RANKS = (4, 8, 16, 24, 32, 48)
LATENT_RANKS = (32, 64, 96, 128, 192, 256)


def recipes(basis: str) -> list[str]:
    out = [f"svd:rank={r}" for r in (8, 16, 24, 32, 48)] + ["svd:rank=32,sink=0", "svd:rank=48,sink=0"]
    out += [f"svd:rank={r},rope=pre" for r in (8, 16, 24, 32)] + ["svd:rank=32,rope=pre,sink=0"]
    out += ["svd:rank=16,rope=pre,target=k", "svd:rank=32,target=v"]
    out += ["svd:energy=0.9", "svd:energy=0.95", "svd:energy=0.99", "svd:energy=0.99,sink=0"]
    out += ["svd:energy=0.95,rope=pre"]
    out += [f"svd:rank={r},basis={basis}" for r in (16, 32)]
    out += [f"svd:rank={r},rope=pre,basis={basis}" for r in (16, 32)]
    out += ["svd:rank=32,bits=4", "svd:rank=24,rope=pre,bits=4", "svd:rank=32,rope=pre,bits=8"]
    out += [f"latent:rank={r}" for r in LATENT_RANKS] + ["latent:rank=128,sink=0"]
    out += [f"latent:rank={r},basis={basis}" for r in LATENT_RANKS]
    out += ["xkv:group=2,rank=96", "xkv:group=2,rank=192", "xkv:group=4,rank=192", "xkv:group=4,rank=384"]
    out += ["minicache", "minicache:t=0.3", "minicache:t=0.5"]
    out += ["int4:axis=channel", "snapkv:0.5", "snapkv:0.5 > svd:rank=24,rope=pre,bits=4",
            "streaming:sink=4,window=508 > latent:rank=128,bits=8"]
    return out


def held_out_ids(tok, name: str, context: int, continuation: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = tok(essay(name), add_special_tokens=False, return_tensors="pt").input_ids[0]
    need = context + continuation
    if ids.numel() < need:
        raise SystemExit(f"essay {name!r} has {ids.numel()} tokens; pick one with at least {need}")
    return ids[:context], ids[context:need]


@torch.no_grad()
def continuation_nll(model, cache: KVCache, last_logits: torch.Tensor, cont: torch.Tensor) -> float:
    """Mean negative log-likelihood of ``cont`` given the cache (the first token from the prefill's logits)."""
    with enable(model):
        out = model(input_ids=cont[None], **cache_kwargs(CompressedCache(cache, model.dtype)), use_cache=True)
    logits = torch.cat([last_logits[None], out.logits[0, :-1].float()])
    return float(torch.nn.functional.cross_entropy(logits, cont))


def relative_error(cache: KVCache, full: KVCache, part: str) -> float:
    num = den = 0.0
    for a, b in zip(cache.layers, full.layers):
        if sum(a.lengths) != sum(b.lengths):
            return math.nan  # evicted rows: no row-by-row comparison
        x = getattr(b, part).decode().double()
        num += float(((getattr(a, part).decode().double() - x) ** 2).sum())
        den += float((x**2).sum())
    return num / den


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--essay", default="worked", help="held-out essay (not used for calibration)")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--continuation", type=int, default=256)
    ap.add_argument("--calib-tokens", type=int, default=4096)
    ap.add_argument("--basis", help="an existing calibrated basis (skips calibration)")
    ap.add_argument("--only", help="run only recipes containing this text")
    ap.add_argument("--recipes", help="run these recipes instead ('a;b;c'; CAL stands for the calibrated basis)")
    args = ap.parse_args()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model, tok = load(args.model)
    print(f"# model {args.model} loaded in {time.perf_counter() - t0:.0f}s; torch {torch.__version__}, "
          f"transformers {transformers.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads")
    info = model_info(model)
    ctx_ids, cont = held_out_ids(tok, args.essay, args.context, args.continuation)
    basis = args.basis
    if basis is None:
        basis = str(Path(tempfile.mkdtemp()) / "smollm2_basis")
        t = time.perf_counter()
        texts = [essay(n) for n in essay_names() if n != args.essay]
        calibrate_to_file(model, tok, basis, texts, f"essays except {args.essay}", tokens=args.calib_tokens)
        print(f"# calibrated on {args.calib_tokens} tokens of other essays in {time.perf_counter() - t:.0f}s")
    pre = prefill(model, info, ctx_ids, frozenset({NEED_WINDOW_QUERIES}), window_queries=32)
    full = pre.cache
    tables = rope_tables(model)
    ctx = StageContext(info.num_query_heads, info.num_kv_heads, info.head_dim, info.num_layers,
                       captures={**pre.captures, NEED_ROPE: tables})
    t_tok = full.context_length
    print(f"# essay '{args.essay}': {t_tok} context tokens, {cont.numel()} continuation tokens; "
          f"dense fp32 cache {full.nbytes / t_tok:.0f} B/token")

    # 1. keys: error vs rank after and before RoPE, values for reference
    rows = []
    for r in RANKS:
        post = Recipe.parse(f"svd:rank={r},sink=0").apply(full, ctx)
        prer = Recipe.parse(f"svd:rank={r},rope=pre,target=k,sink=0").apply(full, ctx)
        rows.append((str(r), f"{relative_error(post, full, 'keys'):.4f}", f"{relative_error(prer, full, 'keys'):.4f}",
                     f"{relative_error(post, full, 'values'):.4f}"))
    print("\n## reconstruction error vs rank (per-context basis, per KV head, head_dim 64, sink=0)\n")
    print(table(rows, ("rank", "K post-RoPE", "K pre-RoPE", "V")))

    # 2. recipes
    base_nll = continuation_nll(model, full, pre.last_logits, cont)
    print(f"\n## recipes (perplexity of the continuation: full cache {math.exp(base_nll):.3f})\n")
    rows, results = [], []
    chosen = [r.strip().replace("CAL", basis) for r in args.recipes.split(";")] if args.recipes else recipes(basis)
    for text in chosen:
        if args.only and args.only not in text:
            continue
        t = time.perf_counter()
        try:
            cache = Recipe.parse(text).apply(full, ctx)
        except KvstackError as exc:
            print(f"  {text}: {exc}", flush=True)
            continue
        secs = time.perf_counter() - t
        nll = continuation_nll(model, cache, pre.last_logits, cont)
        ppl = math.exp(nll)
        delta = 100 * (math.exp(nll - base_nll) - 1)
        shown = text.replace(basis, "CAL")
        results.append((shown, delta))
        rows.append((shown, f"{cache.nbytes / t_tok:.0f}", f"{full.nbytes / cache.nbytes:.2f}x",
                     f"{relative_error(cache, full, 'keys'):.4f}", f"{relative_error(cache, full, 'values'):.4f}",
                     f"{ppl:.3f}", f"{delta:+.1f}%", f"{secs:.1f}"))
        print("  " + "  ".join(rows[-1]), flush=True)
    print()
    print(table(rows, ("recipe", "B/token", "ratio", "K err", "V err", "ppl", "dppl", "compress s")))

    # 3. rank needed per perplexity level
    print("\n## smallest rank within each perplexity delta\n")
    out = []
    for family in ("svd:rank=", "svd:rank=*,rope=pre", "latent:rank=", "latent:rank=*,basis=CAL"):
        head, _, tail = family.partition("*")
        picks = []
        for level in (1.0, 2.0, 5.0, 10.0):
            ok = [(int(s[len(head.rstrip("*")) :].split(",")[0]), d) for s, d in results
                  if s.startswith(head.rstrip("*")) and s.endswith(tail) and (tail or "," not in s) and d <= level]
            picks.append(str(min(r for r, _ in ok)) if ok else "-")
        out.append((family.replace("*", "R") if "*" in family else family + "R", *picks))
    print(table(out, ("family", "<=1%", "<=2%", "<=5%", "<=10%")))


if __name__ == "__main__":
    main()
