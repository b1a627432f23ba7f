"""``kvstack plan``: what a model's KV cache costs, what fits, and what each technique buys.

``register`` adds the subcommand to the main argparse parser; ``run_plan`` runs it and returns
an exit code (0 ok, 2 for any kvstack error, printed as one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from kvstack.errors import KvstackError
from kvstack.plan.fit import cache_budget, max_batch, max_context, weight_bytes
from kvstack.plan.load import load_spec
from kvstack.plan.planner import Plan, plan_with, resolve_storage
from kvstack.plan.presets import PRESETS
from kvstack.plan.render import render_comparison, render_plan
from kvstack.plan.units import (
    format_bytes,
    format_context,
    format_number,
    parse_context,
    parse_positive_int,
)
from kvstack.plan.whatif import apply_what_ifs, parse_local_global, parse_mla

DESCRIPTION = """\
What any architecture's KV cache costs at a context length and batch size, what fits on a
device next to the weights, and what each technique buys (GQA, layer sharing, sliding windows,
MLA, quantization, kvstack recipes). Works from a preset name or a Hugging Face config.json;
no model is downloaded or loaded.

Bytes are counted exactly from the config: per layer, tokens held x (K+V elements per token)
x bits / 8. Sliding layers hold min(context, window) tokens, shared layers hold nothing (they
read another layer's cache), MLA layers hold kv_lora_rank + qk_rope_head_dim per token."""

EPILOG = """\
examples:
  kvstack plan llama-3.1-8b --context 128K
  kvstack plan llama-3.1-405b deepseek-v3 --context 128K     compare models
  kvstack plan path/to/config.json --dtype bf16 --json
  kvstack plan llama-3.1-8b --gqa 32                         the same model as MHA
  kvstack plan deepseek-v3 --gqa 128 --head-dim 128          DeepSeek-V3 without MLA
  kvstack plan llama-3.1-8b --window 1024 --local-global 5:1 Gemma-3-style interleaving
  kvstack plan llama-3.1-8b --share-layers 16 --mla 512+64
  kvstack plan llama-3.1-8b --recipe "snapkv:0.25 > int4" --context 128K
  kvstack plan llama-3.1-8b --device-memory 24GiB --weights auto --context 32K
  kvstack plan llama-3.1-8b mistral-7b gemma-3-27b --plot cache.png
  kvstack plan --list-presets

With what-ifs, --bits, --group-size or --recipe, the unchanged model is planned too and a
comparison line shows what the change buys. --json prints one object per planned variant
(a list when there are several): {"model", "context", "batch", "total_bytes",
"layers": [{"index", "kind", "tokens_held", "bytes"}]}; layer bytes cover the whole batch."""


def register(subparsers: Any) -> None:
    """Add the ``plan`` subcommand to an argparse subparsers action."""
    p = subparsers.add_parser(
        "plan",
        help="KV cache size of any architecture, what fits on a device, what each technique buys",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "models",
        nargs="*",
        metavar="MODEL",
        help="preset name (see --list-presets), a preset's Hub id, or a path to a config.json "
        "(or the folder holding it); give several to compare them",
    )
    p.add_argument(
        "--context",
        default="8K",
        help="tokens per sequence: an integer or K/M with K = 1024, e.g. 8K, 128K, 1M "
        "(default: 8K)",
    )
    p.add_argument("--batch", default="1", help="sequences held at once (default: 1)")
    p.add_argument(
        "--dtype",
        default=None,
        help="cache storage dtype: fp32, bf16, fp16, fp8, int8, int4 or int2 "
        "(default: the config's torch_dtype/dtype; an error if it names none)",
    )
    p.add_argument(
        "--group-size",
        type=int,
        default=None,
        metavar="N",
        help="for integer dtypes or --bits: add one fp16 scale and one fp16 zero point per group "
        "of N elements of a head vector (default: none, pure bits)",
    )
    p.add_argument(
        "--bits",
        type=float,
        default=None,
        metavar="B",
        help="bits per cached element, overriding the dtype's width (e.g. 4, or 6 for "
        "DeepSeek-V2's reported average)",
    )
    p.add_argument(
        "--recipe",
        default=None,
        metavar="R",
        help="apply the analytic size estimate of a kvstack recipe, e.g. "
        "'streaming:sink=4,window=512 > int8' or 'snapkv:0.25 > int4'",
    )
    what = p.add_argument_group("what-ifs (applied in this order to every MODEL)")
    what.add_argument(
        "--gqa",
        type=int,
        default=None,
        metavar="N",
        help="N KV heads per layer (N = query heads is MHA, 1 is MQA); turns MLA layers back "
        "into multi-head attention",
    )
    what.add_argument(
        "--head-dim",
        type=int,
        default=None,
        metavar="D",
        help="key and value head size D on every layer (e.g. 128 for DeepSeek-V3 as MHA)",
    )
    what.add_argument(
        "--mla",
        default=None,
        metavar="R+P",
        help="Multi-head Latent Attention: cache an R-dim latent plus a P-dim RoPE key per "
        "token per layer, e.g. 512+64 (DeepSeek-V2/V3)",
    )
    what.add_argument(
        "--window",
        default=None,
        metavar="W",
        help="sliding window of W tokens (8K style accepted): resizes existing sliding layers, or "
        "makes every layer sliding unless --local-global says which",
    )
    what.add_argument(
        "--local-global",
        default=None,
        metavar="L:G",
        help="interleave L sliding layers then G global ones, repeating (Gemma 3 is 5:1)",
    )
    what.add_argument(
        "--share-layers",
        type=int,
        default=None,
        metavar="N",
        help="the last N layers reuse the cache of the last earlier layer of the same type "
        "(Gemma 3n/4 KV sharing); 0 removes sharing",
    )
    fit = p.add_argument_group("what fits")
    fit.add_argument(
        "--device-memory",
        default=None,
        metavar="SIZE",
        help="device memory, e.g. 8GiB, 80GB, 512MiB or bytes: report the longest context at "
        "--batch and the largest batch at --context that fit next to the weights",
    )
    fit.add_argument(
        "--weights",
        default="auto",
        metavar="auto|SIZE",
        help="bytes of the weights: a size, or auto = parameter count (published for presets, "
        "estimated from the config otherwise) x bytes per weight of the checkpoint dtype "
        "(default: auto)",
    )
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print JSON instead of tables")
    out.add_argument(
        "--plot",
        default=None,
        metavar="FILE.png",
        help="also write a log-log chart of cache bytes vs context (1K..1M) for every planned "
        "model and variant (needs matplotlib)",
    )
    out.add_argument("--per-layer", action="store_true", help="one table row per layer")
    out.add_argument(
        "--list-presets", action="store_true", help="list the built-in presets and exit"
    )
    p.set_defaults(func=run_plan)


def run_plan(args: argparse.Namespace) -> int:
    """Run ``kvstack plan`` for parsed arguments; returns the process exit code."""
    try:
        return _run(args)
    except KvstackError as exc:
        print(f"kvstack plan: error: {exc}", file=sys.stderr)
        return 2


def _what_ifs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "gqa": args.gqa,
        "head_dim": args.head_dim,
        "mla": parse_mla(args.mla) if args.mla is not None else None,
        "window": parse_context(args.window) if args.window is not None else None,
        "local_global": (
            parse_local_global(args.local_global) if args.local_global is not None else None
        ),
        "share_layers": args.share_layers,
    }


def _run(args: argparse.Namespace) -> int:
    if args.list_presets:
        print(list_presets_text())
        return 0
    if not args.models:
        from kvstack.errors import InputError

        raise InputError(
            "give at least one MODEL (a preset or a config.json path); --list-presets lists presets"
        )
    context = parse_context(args.context)
    batch = parse_positive_int(args.batch, "--batch")
    what_ifs = _what_ifs(args)
    changed = any(v is not None for v in what_ifs.values())
    storage_changed = any(x is not None for x in (args.bits, args.group_size, args.recipe))
    plans: list[Plan] = []  # every plan, base and variant, in display order
    variants: list[Plan] = []  # what the user asked for (printed in full / as JSON)
    series = []
    for model in args.models:
        base = load_spec(model)
        spec = apply_what_ifs(base, **what_ifs) if changed else base
        storage = resolve_storage(
            spec, args.dtype, bits=args.bits, group_size=args.group_size, recipe=args.recipe
        )
        if changed or storage_changed:
            base_storage = resolve_storage(base, args.dtype)
            base_plan = plan_with(base, context, batch, base_storage)
            plans.append(base_plan)
            series.append((base.name, base, base_storage))
        variant = plan_with(spec, context, batch, storage)
        plans.append(variant)
        variants.append(variant)
        label = spec.name + (f" [{args.recipe}]" if args.recipe else "")
        series.append((label, spec, storage))
    fit_lines = _fit_lines(args, variants) if args.device_memory else []
    if args.json:
        payload = [p.to_json() for p in variants]
        print(json.dumps(payload[0] if len(payload) == 1 else payload, indent=2))
        for line in fit_lines:
            print(line, file=sys.stderr)
    else:
        blocks = [render_plan(p, per_layer=args.per_layer) for p in variants]
        if len(plans) > 1:
            blocks.append(render_comparison(plans))
        if fit_lines:
            blocks.append("\n".join(fit_lines))
        print("\n\n".join(blocks))
    if args.plot:
        from kvstack.plan.plot import plot_cache_curves

        budgets = []
        if args.device_memory:
            spec0 = variants[0].spec
            left = cache_budget(spec0, args.device_memory, args.weights)
            budgets.append((f"memory left for the cache ({spec0.name})", left))
        path = plot_cache_curves(series, args.plot, batch=batch, budgets=budgets)
        print(f"wrote {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _fit_lines(args: argparse.Namespace, variants: list[Plan]) -> list[str]:
    lines = [f"what fits in {format_bytes(_memory(args.device_memory))} of device memory:"]
    for p in variants:
        spec, storage = p.spec, p.storage
        weights = weight_bytes(spec, args.weights)
        kwargs = {
            "dtype": args.dtype,
            "bits": args.bits,
            "group_size": args.group_size,
            "recipe": storage.recipe,
        }
        source = "given"
        if str(args.weights).strip().lower() == "auto":
            kind = "published" if spec.params_published else "estimated"
            source = f"{kind} {spec.params / 1e9:.3g}B params"
        longest = max_context(spec, args.device_memory, args.weights, p.batch, **kwargs)
        most = max_batch(spec, args.device_memory, args.weights, p.context, **kwargs)
        if longest is None:
            longest_text = "unlimited (the cache stops growing before memory runs out)"
        else:
            short = format_context(longest)
            longest_text = f"{longest:,} tokens" + (
                f" ({short})" if short != f"{longest:,}" else ""
            )
            longest_text = longest_text if longest else "none (not one token fits)"
            limit = spec.max_position_embeddings
            if limit and longest > limit:
                longest_text += f", beyond the model's max_position_embeddings ({limit:,})"
        lines += [
            f"  {spec.name}: weights {format_bytes(weights)} ({source})",
            f"    longest context at batch {p.batch}: {longest_text}",
            f"    largest batch at context {format_context(p.context)}: {most:,}",
        ]
    return lines


def _memory(value: str) -> int:
    from kvstack.plan.units import parse_size

    return parse_size(value)


def list_presets_text() -> str:
    """The preset table: name, family, layers, bytes per token in the preset's dtype, source."""
    rows = [("preset", "model_type", "layers", "dtype", "bytes/token", "params", "source")]
    for name in PRESETS:
        spec = load_spec(name)
        storage = resolve_storage(spec)
        p = plan_with(spec, 1, 1, storage)
        params = f"{spec.params / 1e9:.3g}B" + ("" if spec.params_published else " (est.)")
        rows.append(
            (
                name,
                spec.model_type,
                ", ".join(f"{n} {k}" for k, n in spec.kind_counts().items()),
                storage.precision.label,
                format_number(p.bytes_per_token),
                params,
                PRESETS[name].get("_source", ""),
            )
        )
    widths = [max(len(str(r[c])) for r in rows) for c in range(len(rows[0]))]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )
