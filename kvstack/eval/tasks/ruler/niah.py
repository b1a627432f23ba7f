"""RULER's eight needle-in-a-haystack tasks, from the paper's configurations.

A needle is ``One of the special magic {numbers} for {key} is: {value}.``; the haystack is
RULER's repeated noise sentences, Paul Graham essays, or (``needle``) nothing but other needles,
each a distractor. Depths come from RULER's grid of 40 evenly spaced positions.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from kvstack.eval.tasks.base import ALL, ANY, Sample, Task
from kvstack.eval.tasks.haystack import filler, insert
from kvstack.eval.tasks.ruler import templates as T
from kvstack.eval.tasks.ruler.fit import budget, fit_units
from kvstack.eval.tasks.ruler.words import unique, value

DEPTHS = tuple(round(100 * i / 39) for i in range(40))  # RULER: np.linspace(0, 100, 40), rounded


@dataclass(frozen=True)
class NiahConfig:
    haystack: str  # noise | essay | needle
    key: str = "words"  # words | numbers | uuids
    value: str = "numbers"
    keys: int = 1  # needles with different keys
    values: int = 1  # values under each key
    queries: int = 1  # keys asked about


def _lines(cfg: NiahConfig, rng: random.Random, n: int, taken: set[str]) -> list[str]:
    if cfg.haystack == "noise":
        return [T.NOISE] * n
    return [  # "needle" haystack: every line a needle of another key
        T.NIAH_NEEDLE.format(kind=cfg.value, key=unique(cfg.key, rng, taken), value=value(cfg.value, rng))
        for _ in range(n)
    ]


class RulerNiah(Task):
    """One RULER NIAH configuration; subclasses only name it and set :attr:`config`."""

    config = NiahConfig("essay")
    max_new_tokens = 32

    def build(self, tokenizer, length, rng, index):
        cfg, taken = self.config, set()
        keys = [unique(cfg.key, rng, taken) for _ in range(max(cfg.keys, cfg.queries))]
        values = [[unique(cfg.value, rng, taken) for _ in range(cfg.values)] for _ in keys]
        needles = [T.NIAH_NEEDLE.format(kind=cfg.value, key=k, value=v) for k, vs in zip(keys, values) for v in vs]
        rng.shuffle(needles)
        asked = rng.sample(range(len(keys)), cfg.queries)
        query = keys[asked[-1]]
        if cfg.queries > 1:
            query = ", ".join(keys[i] for i in asked[:-1]) + ", and " + query
        answers = tuple(v for i in asked for v in values[i])
        intro, question, prefix = T.NIAH_INTRO, T.NIAH_QUESTION, T.NIAH_PREFIX
        kind = cfg.value
        if len(answers) == 1:
            intro, question, prefix, kind = T.singular(intro), T.singular(question), T.singular(prefix), kind[:-1]
        question, prefix = question.format(kind=kind, query=query), prefix.format(kind=kind, query=query)
        intro = intro.format(kind=kind)
        target = budget(tokenizer, length, question, prefix, self.max_new_tokens)
        depths = [d / 100 for d in rng.sample(DEPTHS, len(needles))]
        if cfg.haystack == "essay":
            state = rng.getstate()

            def build(n: int) -> str:
                rng.setstate(state)  # the same essay span for every n tried
                return intro + "\n" + insert(filler(tokenizer, n, rng), list(zip(depths, needles)))

            _, context = fit_units(tokenizer, target, build, target)
        else:
            per_line = 25 if cfg.haystack == "noise" else 18  # tokens a line, about, with a BPE of ~50k words
            # lines to draw from: far more than fit (the pool's size fixes the samples: kept as first published)
            pool = _lines(cfg, rng, 4 * target // 10 + 64, set(taken))
            spots = [rng.random() for _ in needles]

            def build(n: int) -> str:
                lines = list(pool[: n])
                for spot, needle in sorted(zip(spots, needles), reverse=True):
                    lines.insert(int(spot * (len(lines) + 1)), needle)
                return intro + "\n" + "\n".join(lines)

            _, context = fit_units(tokenizer, target, build, target // per_line, most=len(pool))
        return Sample(
            self.name, index, context, question, answers, ANY if len(answers) == 1 else ALL, prefix,
            verbatim=True, meta={"keys": [keys[i] for i in asked], "needles": len(needles), "haystack": cfg.haystack},
        )


def _task(name: str, summary: str, cfg: NiahConfig, new_tokens: int = 32) -> type[RulerNiah]:
    return type(name, (RulerNiah,), {"name": name, "summary": summary, "config": cfg, "max_new_tokens": new_tokens})


NIAH_TASKS = (
    _task("ruler_niah_single_1", "RULER: one number under a word key in repeated noise sentences",
          NiahConfig("noise")),
    _task("ruler_niah_single_2", "RULER: one number under a word key in essays (vanilla NIAH)", NiahConfig("essay")),
    _task("ruler_niah_single_3", "RULER: one UUID under a word key in essays",
          NiahConfig("essay", value="uuids"), 48),
    _task("ruler_niah_multikey_1", "RULER: four numbers under four word keys in essays; one asked",
          NiahConfig("essay", keys=4)),
    _task("ruler_niah_multikey_2", "RULER: every line of the haystack is a needle; one key asked",
          NiahConfig("needle")),
    _task("ruler_niah_multikey_3", "RULER: UUID keys and values, every line a needle; one key asked",
          NiahConfig("needle", key="uuids", value="uuids"), 48),
    _task("ruler_niah_multivalue", "RULER: four numbers under one word key in essays; all asked",
          NiahConfig("essay", values=4), 64),
    _task("ruler_niah_multiquery", "RULER: four numbers under four keys in essays; all four asked",
          NiahConfig("essay", keys=4, queries=4), 64),
)
