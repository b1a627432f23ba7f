"""FastGen (Ge et al. 2024, "Model Tells You What to Discard"): heads differ - some look only at
special tokens, some locally, some at a few heavy hitters, some everywhere - so each KV head
gets its own policy, picked on the prompt, and its own number of rows.

Per KV head, the candidate kept sets are ``S`` (special tokens: the first ``sink`` positions,
plus the ``punct`` token ids), ``S+local`` (the newest ``local`` rows), ``S+frequent`` (the
``freq`` rows with the most attention), ``S+frequent+local``, and everything. The head takes
the smallest set (ties: that order) that recovers at least ``threshold`` of the attention
mass the last ``window`` context queries of its group give its rows. The kept share is an
outcome, not an input; heads store only their rows (``cache.stats["fastgen"]`` lists the
policies). A stage has no tokenizer, so punctuation ids are given in the recipe
(:func:`punctuation_ids` lists them for a tokenizer); the paper's policies are otherwise kept.
"""

from __future__ import annotations

import math

import torch

from kvstack.grammar.needs import NEED_WINDOW_QUERIES
from kvstack.kv import KVCache, KVLayer
from kvstack.registry import Stage, StageContext, register
from kvstack.stages.select.scores import LayerRows, attention_received, group_reduce, newest_rows, rank, score_params

POLICIES = ("special", "special+local", "special+frequent", "special+frequent+local", "full")




def punctuation_ids(tokenizer) -> list[int]:
    """Ids of the vocabulary tokens that decode to punctuation only (for ``fastgen:...,punct=``)."""
    marks = set(".,;:!?\"'()[]-\n")
    out = []
    for i in range(len(tokenizer)):
        text = tokenizer.decode([i]).strip(" ")
        if text and set(text) <= marks:
            out.append(i)
    return out


def share(value: float, rows: int) -> int:
    """A share of ``rows`` (``value < 1``, rounded half up) or a count (``value >= 1``), within ``[0, rows]``."""
    n = int(value) if value >= 1 else math.floor(value * rows + 0.5)
    return min(n, rows)


def choose(mass: torch.Tensor, sets: list[torch.Tensor], threshold: float) -> int:
    """Index of the cheapest set (fewest rows; ties: earlier) whose rows hold ``threshold`` of ``mass``.
    Zero total mass (no query sees the head) takes the cheapest non-empty set."""
    total = float(mass.sum())
    order = sorted(range(len(sets)), key=lambda i: (int(sets[i].sum()), i))
    for i in order:
        n = int(sets[i].sum())
        if n and (total <= 0 or float(mass[sets[i]].sum()) >= threshold * total * (1 - 1e-6)):
            return i
    return len(sets) - 1


@register
class FastGen(Stage, grammar="fastgen"):
    """FastGen; parameters and checks: :mod:`kvstack.grammar.select`."""

    needs = frozenset({NEED_WINDOW_QUERIES})
    threshold: float
    window: int
    local: float
    freq: float
    sink: int
    punct: tuple[int, ...]

    def apply(self, cache: KVCache, ctx: StageContext, layers: set[int]) -> KVCache:
        chosen: dict[int, list[str]] = {}
        token_ids = cache.context_ids.long()
        punct = torch.tensor(self.punct, dtype=torch.long)

        def run(index: int, layer: KVLayer) -> KVLayer:
            rows = LayerRows(layer)
            special = rows.valid & ((rows.pos < self.sink) | torch.isin(token_ids[rows.pos], punct))
            mass = self.mass(index, rows, ctx, cache.context_length)
            keep, names = [], []
            for h, n in enumerate(rows.counts):
                valid = rows.valid[h]
                local = newest_rows(rows, [share(self.local, n) if i == h else 0 for i in range(rows.num_heads)])[h]
                frequent = torch.zeros_like(valid)
                cand = torch.nonzero(valid).flatten()
                frequent[cand[rank(mass[h, cand])[: share(self.freq, n)]]] = True
                sets = [special[h], special[h] | local, special[h] | frequent, special[h] | frequent | local, valid]
                pick = choose(mass[h].masked_fill(~valid, 0.0), sets, self.threshold)
                names.append(POLICIES[pick])
                keep.append(torch.nonzero(sets[pick] & valid).flatten())
            chosen[index] = names
            return layer.select_rows(keep)

        out = cache.map_layers(run, layers)
        out.stats = {**out.stats, "fastgen": dict(sorted(chosen.items()))}
        return out

    def mass(self, index: int, rows: LayerRows, ctx: StageContext, context_length: int) -> torch.Tensor:
        """``[Hkv, Lmax]``: attention the last ``window`` context queries of each group give each row."""
        q = ctx.captures[NEED_WINDOW_QUERIES][index][:, -self.window :].float()
        scaling, softcap = score_params(ctx, index, q.shape[-1])
        pos = torch.arange(context_length - q.shape[1], context_length)
        att = attention_received(q, pos, rows, scaling=scaling, softcap=softcap)
        return group_reduce(att, rows.num_heads).float().cpu()
