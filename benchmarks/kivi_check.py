"""Is `kivi:2`'s collapse on SmolLM2 the method or a defect? (issue 17)

Two measurements on one real SmolLM2-135M cache (a RULER single-needle sample, CPU, fp32):

1. kvstack's `kivi:2` against an independent float64 re-implementation of KIVI's quantizer
   (Liu et al. 2024: keys in groups of 32 tokens per channel, values in groups of 32 channels
   per token, asymmetric min-max 2-bit codes, the last 128 tokens dense). If the two agree
   to fp16 rounding of the scales, the collapse is the method at this size, not a bug.
2. Per layer, the relative error of each quantized cache's attention output for the
   sample's own question queries (the quantity retrieval depends on), for KIVI and the int4
   layouts, and how often the top-attended context token changes.

    python benchmarks/kivi_check.py --tokens 2048
"""

from __future__ import annotations

import argparse
import statistics

import torch

import kvstack
from kvstack.eval.attention_error import attention_errors, head_rows, question_queries
from kvstack.eval.prompt import format_sample
from kvstack.eval.tasks import get_task
from kvstack.zoo import load

RECIPES = ("kivi:2", "kivi:2,sink=4", "kivi:4", "int4:token,norot", "int4", "int4:vaxis=token", "int8")


def kivi_reference(rows: torch.Tensor, axis: str, bits: int = 2, group: int = 32) -> torch.Tensor:
    """Float64 KIVI fake-quantization of one head's ``[T, d]`` rows (``axis``: keys 'channel', values 'token')."""
    x = rows.double()
    out = torch.empty_like(x)
    top = 2**bits - 1
    if axis == "channel":  # groups of `group` tokens, per channel
        for s in range(0, x.shape[0], group):
            g = x[s : s + group]
            lo, hi = g.min(0).values, g.max(0).values
            scale = ((hi - lo) / top).clamp_min(1e-12)
            out[s : s + group] = torch.round((g - lo) / scale).clamp(0, top) * scale + lo
    else:  # groups of `group` channels, per token
        for s in range(0, x.shape[1], group):
            g = x[:, s : s + group]
            lo, hi = g.min(1, keepdim=True).values, g.max(1, keepdim=True).values
            scale = ((hi - lo) / top).clamp_min(1e-12)
            out[:, s : s + group] = torch.round((g - lo) / scale).clamp(0, top) * scale + lo
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), help="recipes for the attention-error table")
    ap.add_argument("--skip-reference", action="store_true", help="only the attention-error table")
    ap.add_argument("--model", default="smollm2-135m", help="bundled model or HF directory (e.g. gemma3-270m)")
    ap.add_argument("--task", default="ruler_niah_single_2")
    ap.add_argument("--samples", type=int, default=1, help="attention-error table averaged over this many samples")
    args = ap.parse_args()
    model, tok = load(args.model)
    samples = get_task(args.task).samples(tok, args.tokens, args.samples, seed=args.seed)
    prompts = [format_sample(tok, s) for s in samples]
    if not args.skip_reference:
        reference_check(model, prompts[0], kvstack.compress(model, prompts[0].context_ids, "identity"), residual=128)
    attention_table(model, prompts, args.recipes)


def reference_check(model, prompt, full, residual: int) -> None:
    """kvstack's kivi:2 against the float64 reference, on the old rows (the residual is exact in both)."""
    kivi = kvstack.compress(model, prompt.context_ids, "kivi:2")
    err_ref = err_got = total = flips = 0.0
    for lf, lq in zip(full.layers, kivi.layers):
        for (kf, vf), (kq, vq) in zip(zip(*head_rows(lf)), zip(*head_rows(lq))):
            old = kf.shape[0] - residual  # the residual is exact in both
            for x, axis, got in ((kf[:old], "channel", kq[:old]), (vf[:old], "token", vq[:old])):
                ref = kivi_reference(x, axis)
                err_ref += (ref - x.double()).pow(2).sum().item()
                err_got += (got.double() - x.double()).pow(2).sum().item()
                span = (x.max() - x.min()).item()
                flips += ((got.double() - ref).abs() > 1e-2 * span).sum().item()
                total += x.numel()
    print(f"kivi:2 vs a float64 KIVI reference (keys: 32 tokens a channel, values: 32 channels a token, 2 bits, "
          f"residual {residual}): RMS error {(err_got / total) ** 0.5:.4f} (kvstack) vs {(err_ref / total) ** 0.5:.4f} "
          f"(reference); {flips / total:.2%} of elements land on another level (fp16 scales/zeros at group edges)")


def attention_table(model, prompts, recipes: list[str]) -> None:
    """Per layer, the attention-output error of each recipe for the question's own queries (Markdown table),
    averaged over ``prompts`` (per layer first, so the worst layer is the worst on average)."""
    tokens = statistics.mean(p.context_ids.numel() for p in prompts)
    print(f"\nrelative error of attention outputs (question queries, {len(prompts)} sample(s), {tokens:.0f} context "
          "tokens); top-1 = share of (head, query) pairs whose most-attended token changes")
    print("| recipe | below model dtype | mean rel. error | worst layer (error) | top-1 changed |")
    print("|---|---|---|---|---|")
    fulls = [kvstack.compress(model, p.context_ids, "identity") for p in prompts]
    queries = [question_queries(model, full, p.question_ids) for p, full in zip(prompts, fulls)]  # once a sample
    for r in recipes:
        per_sample = []
        for p, full, q in zip(prompts, fulls, queries):
            cache = kvstack.compress(model, p.context_ids, r)
            per_sample.append((cache.ratio, attention_errors(model, full, cache, p.question_ids, q)))
        rel = [statistics.mean(errs[i].relative for _, errs in per_sample) for i in range(len(per_sample[0][1]))]
        w = max(range(len(rel)), key=rel.__getitem__)
        flips = statistics.mean(e.top1_changed for _, errs in per_sample for e in errs)
        ratio = statistics.mean(x for x, _ in per_sample)
        print(f"| `{r}` | {ratio:.2f}x | {statistics.mean(rel):.3f} | {w} ({rel[w]:.3f}) | {flips:.1%} |", flush=True)


if __name__ == "__main__":
    main()
