"""``kvstack bench ttft``: time to first token of a context sent as text, as an fp16 cache, or as
compressed caches, over a shaped loopback link to ``kvstack serve``."""

from __future__ import annotations

import argparse

TTFT_EPILOG = """\
What is measured, per context, path and bandwidth:
  TTFT = HTTP request + transfer through a token bucket at the set rate (the stream decoder
  decodes chunks as they arrive, each layer goes to --device as it completes) + the question's
  prefill + first token.
  text: the token ids travel (a wire stream without layers) and the receiver prefills them all;
  fp16: the plain cache (fp16, raw); each recipe: its cache with the default coding (colzstd
  codes, zstd tensors).
  First every path is pulled unshaped (components: receive, answer); then each cell is shaped
  for real unless --max-transfer-s or --budget-s rule it out, in which case it is *derived*:
  max((bytes - burst) / rate, receive) + answer, burst = 10 ms of data (at least 64 KiB).
  Every row says measured or derived; measured rows show the derived value too, so the
  derivation's error is on the page.
  Accuracy: the eval harness's niah_single on --samples contexts, answered from caches that
  went through the wire format ('-' for random:<preset> models: random weights, random ids).
  --deadline adds CacheGen-style adaptation: per layer the level (int8/int4/int2), or the text,
  that meets the deadline with the least measured damage.

examples:
  kvstack bench ttft --model kvstack-retrieval --tokens 4k --bandwidth 0.1 1 10
  kvstack bench ttft --tokens 4k --recipes int8 int4 "snapkv:0.25 > int4" --deadline 900 --samples 4
  kvstack bench ttft --model random:llama-3.1-8b --device cuda --tokens 8k 32k --repeat 1 \\
      --recipes int4 "snapkv:0.25 > int4" int2 --max-transfer-s 40 --budget-s 290   (benchmarks/gpu_ttft.py)
"""


def _positive(unit: str, example: str):
    """An argparse type: a positive float, with a message naming the unit."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text!r}: give a positive number of {unit}, e.g. {example}")
        return value

    return parse


def _tokens(text: str) -> int:
    from kvstack.errors import InputError
    from kvstack.eval.runner import parse_length

    try:
        return parse_length(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_ttft(args: argparse.Namespace) -> int:
    import sys
    import time
    from pathlib import Path

    import torch

    from kvstack.linkbench.models import is_random, load_bench_model
    from kvstack.linkbench.report import environment, format_result, to_json
    from kvstack.linkbench.ttft import TtftSpec, run_ttft

    start = time.perf_counter()  # --budget-s counts from here: building the model is part of the run
    spec = TtftSpec(model=args.model, tokens=list(args.tokens), recipes=list(args.recipes),
                    bandwidths=list(args.bandwidth), samples=args.samples, repeat=args.repeat,
                    deadline_ms=args.deadline, save_dir=args.save_dir, seed=args.seed, device=args.device,
                    chunk_size=args.chunk_size, question_tokens=args.question_tokens,
                    max_transfer_s=args.max_transfer_s, budget_s=args.budget_s, store=args.store)
    spec.check()  # before the model loads
    torch.set_num_threads(args.threads)
    torch.manual_seed(spec.seed)
    t = time.perf_counter()
    model, tok = load_bench_model(spec.model, spec.device, spec.seed)
    built = time.perf_counter() - t
    print(f"{spec.model} built on {spec.device} in {built:.1f} s", file=sys.stderr, flush=True)
    result = run_ttft(spec, model, tok, progress=not args.quiet, start=start,
                      log=lambda line: print(line, file=sys.stderr, flush=True))
    env = environment(next(model.parameters()).device)
    if is_random(spec.model):
        what = (f"random weights (built on {spec.device} in {built:.1f} s): random context ids, a "
                f"{spec.question_tokens}-token random question; accuracy is '-' because random weights answer nothing")
    else:
        what = f"niah_single context (sample 0); accuracy over {spec.samples} samples"
    text = (f"{spec.model} on {env['device']} ({spec.device}), {what}; medians of {spec.repeat}; torch "
            f"{env['torch']}, transformers {env['transformers']}, {env['date']}, torch threads "
            f"{env['torch_threads']}, load average {env['load_average']}; whole run {time.perf_counter() - start:.0f} s"
            f"\n\n{format_result(result)}")
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(to_json(result, {**env, "model_build_s": built}) + "\n")
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
                   help="zoo name, model directory, or random:<plan preset>[,field=value...] (random weights of "
                        "that shape, e.g. random:llama-3.1-8b; default kvstack-retrieval)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N: where the receiver (and sender) compute")
    p.add_argument("--tokens", type=_tokens, nargs="+", default=[4096], metavar="N",
                   help="context tokens, one or more: 4096, 4k, 32k ... (default 4k)")
    p.add_argument("--recipes", nargs="+", default=["int8", "int4", "snapkv:0.25 > int4", "streaming > int4"],
                   metavar="R", help="compressed recipes to send (text and fp16 are always measured)")
    p.add_argument("--bandwidth", nargs="+", type=_positive("Gbit/s", "0.1"), default=[0.1, 1.0, 10.0], metavar="GBIT",
                   help="link rates in Gbit/s (default 0.1 1 10)")
    p.add_argument("--deadline", type=float, metavar="MS",
                   help="TTFT deadline in ms: add the bandwidth-adaptive plan and mark who meets it")
    p.add_argument("--samples", type=int, default=3, help="niah_single samples for accuracy (default 3)")
    p.add_argument("--repeat", type=int, default=1, help="timed pulls per path and bandwidth; the median is shown")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--seed", type=int, default=0, help="sample seed (default 0)")
    p.add_argument("--max-transfer-s", type=_positive("seconds", "10"), metavar="S",
                   help="shape the link for real only for cells whose link time (bytes / rate) is at most S; "
                        "derive the others from measured components")
    p.add_argument("--budget-s", type=_positive("seconds", "10"), metavar="S",
                   help="start no shaped cell that would end more than S seconds after the command started; "
                        "the rest are derived")
    p.add_argument("--question-tokens", type=int, default=64, help="random models: question length (default 64)")
    p.add_argument("--chunk-size", type=int, default=1024, help="prefill chunk when compressing (default 1024)")
    p.add_argument("--store", metavar="DIR", help="where the loopback server keeps payloads (default: a temp dir)")
    p.add_argument("--out", metavar="FILE", help="also write the report (tables) to FILE")
    p.add_argument("--json", metavar="FILE", help="write rows, components, spec and environment as JSON to FILE")
    p.add_argument("--save-dir", metavar="DIR", help="also write every payload sent to DIR/<path>.kvw")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_ttft)
