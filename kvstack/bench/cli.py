"""``kvstack bench ttft``: time to first token of a context sent as text, as an fp16 cache, or as
compressed caches, over a shaped loopback link to ``kvstack serve``."""

from __future__ import annotations

import argparse

TTFT_EPILOG = """\
What is measured, per bandwidth and path (on the first sample's context):
  TTFT = HTTP request + transfer through a token bucket at the set rate (the stream decoder
  decodes chunks as they arrive) + building the cache + the question's prefill + first token.
  text: the token ids travel (a wire stream without layers) and the receiver prefills them all;
  fp16: the plain cache (fp16, raw); each recipe: its cache, entropy-coded (ans, zstd tensors).
  Accuracy: the eval harness's niah_single on --samples contexts, answered from caches that
  went through the wire format. --deadline adds CacheGen-style adaptation: per layer the level
  (int8/int4/int2), or the text, that meets the deadline with the least measured damage.

examples:
  kvstack bench ttft --model kvstack-retrieval --tokens 4k --bandwidth 0.1 1 10
  kvstack bench ttft --tokens 4k --recipes int8 int4 "snapkv:0.25 > int4" --deadline 900 --samples 4
"""


def _gbit(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"bandwidth {text!r}: give a positive number of Gbit/s, e.g. 0.1")
    return value


def _tokens(text: str) -> int:
    from kvstack.errors import InputError
    from kvstack.eval.runner import parse_length

    try:
        return parse_length(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1000 * seconds:.0f}"


def format_result(result) -> str:
    """The result table (plain text, Markdown-friendly) and, with a deadline, the plans."""
    from kvstack.cli import table

    spec = result.spec
    deadline = spec.deadline_ms is not None
    header = ["Gbit/s", "path", "bytes", "TTFT ms", "receive ms", "answer ms", "link MB/s", "accuracy"]
    if deadline:
        header += ["predicted ms", f"meets {spec.deadline_ms:g} ms"]
    rows = []
    for r in sorted(result.rows, key=lambda r: r.gbit):
        row = [f"{r.gbit:g}", r.name, f"{r.bytes:,}", _fmt_ms(r.ttft_s), _fmt_ms(r.receive_s), _fmt_ms(r.answer_s),
               f"{r.link_rate / 1e6:.1f}", "-" if r.accuracy is None else f"{r.accuracy:.2f}"]
        if deadline:
            row += [_fmt_ms(r.predicted_s), "yes" if r.meets else "no"]
        rows.append(tuple(row))
    out = table(rows, tuple(header))
    if result.plans:
        out += "\n\nadaptive plans (level per layer):\n"
        for gbit, plan in sorted(result.plans.items()):
            levels = " ".join(plan.levels) if plan.levels else "everything as text"
            out += (f"  {gbit:g} Gbit/s: {levels}; predicted {1000 * plan.predicted_s:.0f} ms, damage"
                    f" {plan.damage:.4f}{'' if plan.meets else ' (no plan meets the deadline: fastest)'}\n")
    return out


def cmd_ttft(args: argparse.Namespace) -> int:
    import os

    import torch

    from kvstack.bench.ttft import TtftSpec, run_ttft
    from kvstack.eval.runner import load_model

    spec = TtftSpec(model=args.model, tokens=args.tokens, recipes=list(args.recipes), bandwidths=list(args.bandwidth),
                    samples=args.samples, repeat=args.repeat, deadline_ms=args.deadline, save_dir=args.save_dir,
                    seed=args.seed)
    spec.check()  # before the model loads
    torch.set_num_threads(args.threads)
    torch.manual_seed(spec.seed)
    model, tok = load_model(spec.model)
    result = run_ttft(spec, model, tok, progress=not args.quiet)
    print(f"\n{spec.model}, niah_single context of {result.context_tokens} tokens; accuracy over {spec.samples} "
          f"samples; TTFT median of {spec.repeat}; torch threads {torch.get_num_threads()}, load average "
          f"{os.getloadavg()[0]:.1f}\n")
    print(format_result(result))
    return 0


def register(subparsers) -> None:
    """Add ``bench`` (with ``ttft``) to kvstack's CLI."""
    bench = subparsers.add_parser("bench", help="benchmarks (ttft: time to first token over a shaped link)",
                                  description="Benchmarks of kvstack as a system.")
    sub = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
    p = sub.add_parser(
        "ttft", help="time to first token: text vs fp16 cache vs compressed caches at given bandwidths",
        description="Time to first token of a long context sent over a real loopback HTTP link to `kvstack serve`,\n"
        "shaped by a token bucket: as text (re-prefilled), as the fp16 cache, or compressed by recipes.",
        epilog=TTFT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="kvstack-retrieval",
                   help="zoo name or model directory (default kvstack-retrieval)")
    p.add_argument("--tokens", type=_tokens, default=4096, help="context tokens: 4096, 4k, ... (default 4k)")
    p.add_argument("--recipes", nargs="+", default=["int8", "int4", "snapkv:0.25 > int4", "streaming > int4"],
                   metavar="R", help="compressed recipes to send (text and fp16 are always measured)")
    p.add_argument("--bandwidth", nargs="+", type=_gbit, default=[0.1, 1.0, 10.0], metavar="GBIT",
                   help="link rates in Gbit/s (default 0.1 1 10)")
    p.add_argument("--deadline", type=float, metavar="MS",
                   help="TTFT deadline in ms: add the bandwidth-adaptive plan and mark who meets it")
    p.add_argument("--samples", type=int, default=3, help="niah_single samples for accuracy (default 3)")
    p.add_argument("--repeat", type=int, default=1, help="timed pulls per path and bandwidth; the median is shown")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--seed", type=int, default=0, help="sample seed (default 0)")
    p.add_argument("--save-dir", metavar="DIR", help="also write every payload sent to DIR/<path>.kvw")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_ttft)
