"""``kvstack diagnose``: measure per-layer sensitivity and propose a mixed-precision recipe."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kvstack.errors import InputError


def _text(args: argparse.Namespace) -> str:
    if args.context_file:
        path = Path(args.context_file)
        if not path.is_file():
            raise InputError(f"context file {path} does not exist")
        return path.read_text(encoding="utf-8", errors="replace")
    from kvstack.eval.texts import essay, essay_names

    return "\n\n".join(essay(n) for n in essay_names())


def run_diagnose(args: argparse.Namespace) -> int:
    import torch

    from kvstack.cli_text import table
    from kvstack.diagnose import Probe, allocate, compose_recipe, measure
    from kvstack.stack import Recipe
    from kvstack.zoo import load

    options = tuple(o.strip() for o in args.options.split(",") if o.strip())
    for opt in options:  # fail before loading anything
        Recipe.parse(opt)
    model, tok = load(args.model, progress=not args.quiet)
    ids = tok(_text(args), add_special_tokens=False, return_tensors="pt").input_ids[0]
    need = args.tokens + args.continuation
    if ids.numel() < need:
        raise InputError(f"the text has {ids.numel()} tokens; diagnose needs {need} (--tokens + --continuation)")
    torch.manual_seed(0)
    probe = Probe(model, ids[: args.tokens], ids[args.tokens : need], progress=not args.quiet)
    sens = measure(probe, options, args.group, progress=not args.quiet)
    elements = sum(sens.elements)
    if args.budget_bits is None:
        ref = "int4" if "int4" in options else options[0]
        budget = sum(b[ref] for b in sens.bytes)
        label = f"same bytes as uniform {ref}"
    else:
        budget = int(elements * args.budget_bits / 8)
        label = f"{args.budget_bits} bits per element"
    alloc = allocate(sens.kl, sens.bytes, budget)
    recipe = compose_recipe(alloc.choices, args.group)

    rows = [
        (str(i), *[f"{sens.kl[i][o]:.2e}" for o in options], alloc.choices[i]) for i in range(sens.num_layers)
    ]
    print(table(rows, ("layer", *[f"KL {o}" for o in options], "chosen")))
    print(f"\nbudget: {label} = {budget} bytes over {sens.num_layers} layers; allocation uses {alloc.total_bytes}")
    print(f"recipe: {recipe}")
    checks = [("mixed (diagnosed)", recipe)] + [
        (f"uniform {o}", f"{o}:g{args.group}") for o in options if o.startswith("int")
    ]
    rows = []
    for name, rec in checks:
        r = probe.score(rec)
        rows.append((name, f"{r['bits']:.3f}", f"{r['kl']:.3e}", f"{r['nll']:.4f}", f"{r['nll'] - sens.full_nll:+.4f}"))
    print()
    print(table(rows, ("recipe", "bits/elem", "KL to full", "NLL", "dNLL")))
    print(f"full cache NLL {sens.full_nll:.4f} on {sens.stats['continuation']} tokens after {args.tokens} of context")
    if args.out:
        Path(args.out).write_text(recipe + "\n")
        print(f"recipe written to {args.out}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "options": options, "kl": sens.kl, "bytes": sens.bytes, "choices": alloc.choices,
            "recipe": recipe, "budget_bytes": budget, "full_nll": sens.full_nll,
            "checks": [dict(zip(("recipe", "bits", "kl", "nll", "dnll"), r)) for r in rows],
        }, indent=1))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "diagnose",
        help="measure each layer's sensitivity to quantization and propose a mixed-precision recipe",
        description="Quantize one layer at a time at each candidate width, measure the change of the model's "
        "next-token distribution over a held-out continuation (KL to the full cache), then choose per-layer "
        "widths that fit the byte budget with the least summed damage (exact knapsack), and check the result.",
        epilog="example: kvstack diagnose --model smollm2-135m --budget-bits 4.5 --out mixed.txt",
    )
    p.add_argument("--model", default="smollm2-135m", help="bundled model name or local HF model dir")
    p.add_argument("--budget-bits", type=float, default=None,
                   help="average bits per K/V element, scales included (default: the bytes of uniform int4)")
    p.add_argument("--options", default="int2,int3,int4,int8,fp16", help="candidate widths per layer")
    p.add_argument("--group", type=int, default=64, help="quantization group size (default 64)")
    p.add_argument("--context-file", help="calibration text (default: the bundled Paul Graham essays)")
    p.add_argument("--tokens", type=int, default=1024, help="context tokens (default 1024)")
    p.add_argument("--continuation", type=int, default=128, help="held-out continuation tokens scored (default 128)")
    p.add_argument("--out", help="write the proposed recipe to this file")
    p.add_argument("--json", help="write all measurements to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_diagnose)
