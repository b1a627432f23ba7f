"""How much of a RULER context must `surprisal` keep for the answer to survive? (issue 17)

For each sample: every context token's surprisal on SmolLM2-135M (bf16, one forward pass), spread
forward by ``span`` as the stage does, and the rank of the answer's worst-ranked token - i.e. the
smallest fraction ``surprisal:F,span=S`` could keep and still hold the whole answer. No generation:
a cheap, question-free look at where the method can work before any accuracy run.

``--scorers`` compares token scores (issue 17): ``global`` (the prefill's own surprisal, the stage's
default), ``local:W`` (surprisal under only the W tokens before each token: ``surprisal:...,window=W``),
``minrank:W`` (a token ranks by the better of its global and local ranks) and ``sum:W`` (global +
local). ``--agg`` picks how a span forms its score: ``max`` (the stage's ``span``) or ``mean`` (the
span's average, which favours runs of surprising tokens over lone ones).

    python benchmarks/surprisal_ranks.py --tasks ruler_niah_single_2 ruler_niah_multikey_1 --samples 6
    python benchmarks/surprisal_ranks.py --seed 1 --spans 16 --scorers global local:128 --agg max mean --dump s1.pt
    python benchmarks/surprisal_ranks.py --load s1.pt --spans 16 --combos global/max 128/mean@6 128/max+128/mean@6

``--combos`` (on ``--dump`` files, no model): ``SRC/AGG`` with SRC ``global`` or a window, AGG
``max``, ``mean`` or ``mean@C`` (clip at C nats), joined by ``+`` for a union (the stage's
``union=1``; the share is the union's exact size): ``128/max+128/mean@6`` is
``surprisal:F,span=16,window=128,agg=mean,clip=6,union=1``.
"""

from __future__ import annotations

import argparse

import torch

from kvstack.eval.prompt import format_sample
from kvstack.eval.tasks import get_task
from kvstack.grammar.needs import NEED_TOKEN_NLL
from kvstack.hf.captures.local_nll import windowed_nll
from kvstack.hf.model import model_info
from kvstack.hf.prefill import prefill
from kvstack.stages.select.base import spread_forward
from kvstack.zoo import load


def token_surprisal(model, ids: torch.Tensor) -> torch.Tensor:
    """``[T]`` -log p(token | earlier tokens), exactly what the ``surprisal`` stage scores (position 0: inf)."""
    return prefill(model, model_info(model), ids, frozenset({NEED_TOKEN_NLL})).captures[NEED_TOKEN_NLL]


def token_text(tok, ids: torch.Tensor) -> tuple[str, list[int]]:
    """The decoded context and, per token, the length of the decoded text through it. Decoding every prefix costs
    O(T^2) (BPE text is not additive per token): compute it once per context, for all its answers."""
    return tok.decode(ids), [len(tok.decode(ids[: t + 1])) for t in range(ids.numel())]


def answer_tokens(text: str, ends: list[int], answer: str, start_char: int = 0) -> range | None:
    """The positions (``text, ends``: :func:`token_text`) whose text covers the first occurrence of ``answer``
    after ``start_char``."""
    start = text.find(answer, start_char)
    if start < 0:
        return None
    first = next(t for t, e in enumerate(ends) if e > start)
    last = next(t for t, e in enumerate(ends) if e >= start + len(answer))
    return range(first, last + 1)


def ranks(scores: torch.Tensor) -> torch.Tensor:
    """0 for the best score, 1 for the next, ..."""
    rank = torch.empty_like(scores, dtype=torch.long)
    rank[torch.argsort(scores, descending=True)] = torch.arange(scores.numel())
    return rank


def spread(scores: torch.Tensor, span: int, agg: str) -> torch.Tensor:
    """Each position's score over the span that ends at it: the max (the stage) or the mean."""
    if agg == "max":
        return spread_forward(scores.view(1, -1), span)[0]
    padded = torch.nn.functional.pad(scores.view(1, 1, -1), (span, 0), value=0.0)
    mean = torch.nn.functional.avg_pool1d(padded, kernel_size=span + 1, stride=1).view(-1)
    return torch.maximum(spread_forward(mean.view(1, -1), span)[0], mean)


def needed_fraction(nll: torch.Tensor, positions: range, span: int, agg: str = "max") -> float:
    """The share of the context a top-k by spread surprisal must keep to hold every position."""
    scores = spread(nll.nan_to_num(posinf=1e9).clamp(max=1e9), span, agg)
    return (ranks(scores)[list(positions)].max().item() + 1) / scores.numel()


def scorer(name: str, model, ids: torch.Tensor, cache: dict) -> torch.Tensor:
    """The ``[T]`` token score ``name`` stands for (higher = keep); captures are computed once per sample."""
    def local(w: int) -> torch.Tensor:
        if w not in cache:
            cache[w] = windowed_nll(model, ids, w)
        return cache[w]

    glob = cache["global"]
    kind, _, arg = name.partition(":")
    if kind == "global":
        return glob
    w = int(arg)
    if kind == "local":
        return local(w)
    big = 1e4  # position 0 (+inf in both) stays first
    g, lo = glob.clamp(max=big), local(w).clamp(max=big)
    if kind == "sum":
        return g + lo
    if kind == "minrank":
        return -torch.minimum(ranks(g), ranks(lo)).float() - 1e-6 * ranks(lo).float()
    raise SystemExit(f"unknown scorer {name!r}: global, local:W, minrank:W or sum:W")


def combined_need(sample: dict, combo: str, span: int) -> float:
    """Needed share for a union of scores: ``combo`` is ``SRC/AGG[+SRC/AGG...]`` with SRC ``global`` or a
    local window (``128``) and AGG ``max`` or ``mean``; a token ranks by its best rank among the parts."""
    parts = []
    for part in combo.split("+"):
        src, _, agg = part.partition("/")
        nll = sample[src].nan_to_num(posinf=1e9).clamp(max=1e9)
        agg, _, clip = (agg or "max").partition("@")  # mean@6: token scores capped at 6 nats before the mean
        if clip:
            nll = nll.clamp(max=float(clip))
            nll[0] = 1e9
        parts.append(ranks(spread(nll, span, agg)))
    rank = torch.stack(parts).min(dim=0).values  # what the stage's union=1 ranks by
    # keeping every token whose best rank is at most the answer's worst: the exact union size (ties included)
    return max((rank <= rank[list(pos)].max()).sum().item() / rank.numel() for pos in sample["answers"])


def analyse(files: list[str], combos: list[str], span: int) -> None:
    """The needed share per sample of every combo, from ``--dump`` files (no model needed)."""
    print("| task | tokens | seed | " + " | ".join(combos) + " |")
    print("|---|---|---|" + "---|" * len(combos))
    for f in files:
        for smp in torch.load(f, weights_only=False):  # our own dump: ranges, tensors
            need = [combined_need(smp, c, span) for c in combos]
            print(f"| {smp['task']} | {smp['tokens']} | {smp['seed']} | " + " | ".join(f"{n:.1%}" for n in need) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=["ruler_niah_single_2", "ruler_niah_multikey_1"])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--samples", type=int, default=6)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--spans", type=int, nargs="+", default=[8, 16, 24, 32])
    ap.add_argument("--scorers", nargs="+", default=["global"], help="global, local:W, minrank:W, sum:W")
    ap.add_argument("--agg", nargs="+", default=["max"], choices=["max", "mean"])
    ap.add_argument("--dump", help="also save each sample's scores and answer positions (torch.save) to this file")
    ap.add_argument("--load", nargs="+", help="analyse --dump files instead (with --combos; no model)")
    ap.add_argument("--combos", nargs="+", default=["global/max", "128/mean", "global/max+128/mean"])
    args = ap.parse_args()
    if args.load:
        return analyse(args.load, args.combos, args.spans[0])
    dumped = []
    model, tok = load("smollm2-135m")
    model = model.to(torch.bfloat16)
    cols = [(sc, agg, span) for sc in args.scorers for agg in args.agg for span in args.spans]
    print("| task | tokens | " + " | ".join(f"{sc} {agg} span={sp}" for sc, agg, sp in cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for task in args.tasks:
        for sample in get_task(task).samples(tok, args.tokens, args.samples, seed=args.seed):
            ids = format_sample(tok, sample).context_ids.view(-1)
            cache = {"global": token_surprisal(model, ids)}
            text, ends = token_text(tok, ids)
            spans = [answer_tokens(text, ends, a) for a in sample.answers]
            spans = [s for s in spans if s is not None]
            need = [
                max(needed_fraction(scorer(sc, model, ids, cache), s, span, agg) for s in spans)
                for sc, agg, span in cols
            ]
            print(f"| {task} | {ids.numel()} | " + " | ".join(f"{n:.1%}" for n in need) + " |", flush=True)
            if args.dump:
                dumped.append({"task": task, "seed": args.seed, "tokens": ids.numel(), "answers": spans, **{
                    str(k): v for k, v in cache.items()}})
                torch.save(dumped, args.dump)


if __name__ == "__main__":
    main()
