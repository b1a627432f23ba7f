"""Tables and the chart in docs/planner.md, regenerated from the presets and the planner.

python -m kvstack.plan.report presets                 # markdown table at 8K / 32K / 128K
python -m kvstack.plan.report combined --plot docs/img/planner_combined.png
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from kvstack.plan.load import load_spec
from kvstack.plan.planner import Storage, plan_with, resolve_storage
from kvstack.plan.presets import preset_names
from kvstack.plan.spec import ArchSpec
from kvstack.plan.units import format_bytes, format_context, format_number
from kvstack.plan.whatif import with_gqa, with_mla, with_shared_layers, with_window

DOC_CONTEXTS = (8192, 32768, 131072)


def attention_summary(spec: ArchSpec) -> str:
    """``GQA 8 KV x 128``, ``MLA 512+64``, ``5:1 sliding 1024 / global`` style description."""
    own = [layer for layer in spec.layers if layer.shares_with is None]
    parts = []
    if all(layer.is_latent for layer in own):
        parts.append(f"MLA {own[0].latent_dim}+{own[0].rope_dim}")
    else:
        heads = sorted({layer.kv_heads for layer in own})
        dims = sorted({layer.k_head_dim for layer in own})
        kind = "MHA" if heads == [spec.num_attention_heads] else ("MQA" if heads == [1] else "GQA")
        parts.append(f"{kind} {'/'.join(map(str, heads))} KV x {'/'.join(map(str, dims))}")
    counts = spec.kind_counts()
    if "sliding" in counts:
        window = next(layer.window for layer in spec.layers if layer.attention == "sliding")
        glob = counts.get("global", 0) + counts.get("latent", 0)
        if glob:
            parts.append(f"{counts['sliding']} sliding ({window:,}) + {glob} global")
        else:
            parts.append(f"all sliding ({window:,})")
    if "shared" in counts:
        parts.append(f"{counts['shared']} shared")
    return ", ".join(parts)


def preset_table(contexts: Sequence[int] = DOC_CONTEXTS, names: Sequence[str] | None = None) -> str:
    """Markdown: each preset's layers, bytes/token and cache at each context (batch 1)."""
    head = ["preset", "layers", "attention", "dtype", "bytes/token"]
    head += [f"cache @ {format_context(c)}" for c in contexts]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names or preset_names():
        spec = load_spec(name)
        storage = resolve_storage(spec)
        cells = [
            name,
            str(spec.num_layers),
            attention_summary(spec),
            storage.precision.label,
            format_number(plan_with(spec, 1, 1, storage).bytes_per_token),
        ]
        for c in contexts:
            text = format_bytes(plan_with(spec, c, 1, storage).total_bytes)
            if spec.max_position_embeddings and c > spec.max_position_embeddings:
                text += " †"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("† beyond the model's `max_position_embeddings` (size shown for comparison only).")
    return "\n".join(lines)


@dataclass(frozen=True)
class Step:
    """One row of the combined-effect ladder."""

    label: str
    spec: ArchSpec
    storage: Storage


def combined_steps(base_name: str = "llama-3.1-8b") -> tuple[list[Step], list[Step]]:
    """(cumulative ladder, one-technique-alone rows) for one base model.

    Ladder: MHA -> GQA (the model as published) -> + 5:1 sliding/global with a 1024 window ->
    + the last half of the layers sharing KV -> + int4 -> + snapkv:0.25 > int4. The second list
    applies each technique alone to the published model, plus MLA 512+64 in place of GQA.
    """
    base = load_spec(base_name)
    bf16 = resolve_storage(base)

    def recipe(spec: ArchSpec, text: str) -> Storage:
        return resolve_storage(spec, recipe=text)

    mha = with_gqa(base, base.num_attention_heads)
    sliding = with_window(base, 1024, (5, 1))
    shared = with_shared_layers(sliding, base.num_layers // 2)
    half = base.num_layers // 2
    ladder = [
        Step(f"MHA ({base.num_attention_heads} KV heads)", mha, bf16),
        Step(f"GQA ({base.layers[0].kv_heads} KV heads, as published)", base, bf16),
        Step("+ sliding window 1024, 5:1 local:global", sliding, bf16),
        Step(f"+ last {half} layers share KV", shared, bf16),
        Step("+ int4 (g32, fp16 scale+zero)", shared, recipe(shared, "int4")),
        Step("+ snapkv:0.25 > int4", shared, recipe(shared, "snapkv:0.25 > int4")),
    ]
    alone = [
        Step("GQA (as published)", base, bf16),
        Step("MLA 512+64 instead of GQA", with_mla(base, 512, 64), bf16),
        Step("sliding 1024, 5:1", sliding, bf16),
        Step(f"last {half} layers share KV", with_shared_layers(base, half), bf16),
        Step("int4 (g32, scale+zero)", base, recipe(base, "int4")),
        Step("snapkv:0.25", base, recipe(base, "snapkv:0.25")),
        Step("streaming:sink=4,window=508", base, recipe(base, "streaming:sink=4,window=508")),
    ]
    return ladder, alone


def steps_table(steps: Sequence[Step], contexts: Sequence[int] = DOC_CONTEXTS) -> str:
    """Markdown: bytes/token and cache per context for each step, with the factor vs the first."""
    head = ["step", "bytes/token"] + [f"cache @ {format_context(c)}" for c in contexts]
    head.append(f"vs first @ {format_context(contexts[-1])}")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    first = plan_with(steps[0].spec, contexts[-1], 1, steps[0].storage).total_bytes
    for step in steps:
        plans = [plan_with(step.spec, c, 1, step.storage) for c in contexts]
        last = plans[-1].total_bytes
        cells = [step.label, format_number(plans[0].bytes_per_token)]
        cells += [format_bytes(p.total_bytes) for p in plans]
        cells.append(
            "1x"
            if step is steps[0]
            else f"1/{first / last:,.1f} ({(last / first - 1) * 100:+.1f}%)"
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_combined(path: str, base_name: str = "llama-3.1-8b") -> None:
    """The docs chart: cache vs context for the cumulative ladder plus MLA in place of GQA."""
    from kvstack.plan.plot import plot_cache_curves

    ladder, alone = combined_steps(base_name)
    mla = next(step for step in alone if step.label.startswith("MLA"))
    series = [(s.label, s.spec, s.storage) for s in ladder]
    series.insert(2, (mla.label, mla.spec, mla.storage))
    plot_cache_curves(
        series,
        path,
        title=f"{base_name}: what each technique buys (batch 1, bf16 unless a row says otherwise)",
        dashed=(mla.label,),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kvstack.plan.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("what", choices=("presets", "combined"))
    parser.add_argument("--base", default="llama-3.1-8b", help="base model of the combined ladder")
    parser.add_argument("--plot", default=None, help="also write the combined chart to this PNG")
    args = parser.parse_args(argv)
    if args.what == "presets":
        print(preset_table())
    else:
        ladder, alone = combined_steps(args.base)
        print("Cumulative:\n")
        print(steps_table(ladder))
        print("\nEach technique alone, on the published model:\n")
        print(steps_table(alone))
        if args.plot:
            plot_combined(args.plot, args.base)
            print(f"\nwrote {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
