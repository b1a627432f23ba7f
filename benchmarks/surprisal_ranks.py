"""How much of a RULER context must `surprisal` keep for the answer to survive? (issue 17)

For each sample: every context token's surprisal on SmolLM2-135M (bf16, one forward pass), spread
forward by ``span`` as the stage does, and the rank of the answer's worst-ranked token - i.e. the
smallest fraction ``surprisal:F,span=S`` could keep and still hold the whole answer. No generation:
a cheap, question-free look at where the method can work before any accuracy run.

    python benchmarks/surprisal_ranks.py --tasks ruler_niah_single_2 ruler_niah_multikey_1 --samples 6
"""

from __future__ import annotations

import argparse

import torch

from kvstack.eval.prompt import format_sample
from kvstack.eval.tasks import get_task
from kvstack.grammar.needs import NEED_TOKEN_NLL
from kvstack.hf.model import model_info
from kvstack.hf.prefill import prefill
from kvstack.stages.select.base import spread_forward
from kvstack.zoo import load


def token_surprisal(model, ids: torch.Tensor) -> torch.Tensor:
    """``[T]`` -log p(token | earlier tokens), exactly what the ``surprisal`` stage scores (position 0: inf)."""
    return prefill(model, model_info(model), ids, frozenset({NEED_TOKEN_NLL})).captures[NEED_TOKEN_NLL]


def answer_tokens(tok, ids: torch.Tensor, answer: str) -> range | None:
    """The context positions whose decoded text covers the first occurrence of ``answer``."""
    text = tok.decode(ids)
    start = text.find(answer)
    if start < 0:
        return None
    ends = [len(tok.decode(ids[: t + 1])) for t in range(ids.numel())]
    first = next(t for t, e in enumerate(ends) if e > start)
    last = next(t for t, e in enumerate(ends) if e >= start + len(answer))
    return range(first, last + 1)


def needed_fraction(nll: torch.Tensor, positions: range, span: int) -> float:
    """The share of the context a top-k by spread surprisal must keep to hold every position."""
    scores = spread_forward(nll.nan_to_num(posinf=1e9).view(1, -1), span)[0]
    rank = torch.empty_like(scores, dtype=torch.long)
    rank[torch.argsort(scores, descending=True)] = torch.arange(scores.numel())
    return (rank[list(positions)].max().item() + 1) / scores.numel()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=["ruler_niah_single_2", "ruler_niah_multikey_1"])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--samples", type=int, default=6)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--spans", type=int, nargs="+", default=[8, 16, 24, 32])
    args = ap.parse_args()
    model, tok = load("smollm2-135m")
    model = model.to(torch.bfloat16)
    print("| task | tokens | " + " | ".join(f"span={s}" for s in args.spans) + " |")
    print("|---|---|" + "---|" * len(args.spans))
    for task in args.tasks:
        for sample in get_task(task).samples(tok, args.tokens, args.samples, seed=args.seed):
            ids = format_sample(tok, sample).context_ids.view(-1)
            nll = token_surprisal(model, ids)
            spans = [answer_tokens(tok, ids, a) for a in sample.answers]
            spans = [s for s in spans if s is not None]
            need = [max(needed_fraction(nll, s, span) for s in spans) for span in args.spans]
            print(f"| {task} | {ids.numel()} | " + " | ".join(f"{n:.1%}" for n in need) + " |", flush=True)


if __name__ == "__main__":
    main()
