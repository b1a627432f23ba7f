"""RULER's variable tracking (multi-hop tracing): ``VAR AAAAA = 12345``, then ``VAR BBBBB = VAR
AAAAA`` and so on, one chain of four hops hidden in repeated noise sentences; name every
variable that ends up holding the value. A cache that loses one link loses what follows it.
"""

from __future__ import annotations

from kvstack.eval.tasks.base import ALL, Sample, Task
from kvstack.eval.tasks.ruler import templates as T
from kvstack.eval.tasks.ruler.fit import budget, fit_units
from kvstack.eval.tasks.vartrack import slot_name


class RulerVariableTracking(Task):
    name = "ruler_vt"
    summary = "RULER: follow one 4-hop chain of variable assignments in noise; name all 5 variables"
    max_new_tokens = 30
    chains, hops = 1, 4

    def build(self, tokenizer, length, rng, index):
        taken: set[str] = set()
        chains = []
        for _ in range(self.chains):
            names = [slot_name(rng, taken) for _ in range(self.hops + 1)]  # 5 capital letters, as RULER's
            val = str(rng.randint(10000, 99999))
            lines = [T.VT_FIRST.format(name=names[0], value=val)]
            lines += [T.VT_COPY.format(name=b, source=a) for a, b in zip(names, names[1:])]
            chains.append((names, val, lines))
        names, val, _ = chains[0]
        question = T.VT_QUESTION.format(query=val)
        prefix = T.VT_PREFIX.format(num_v=len(names), query=val)
        statements = [line for _, _, lines in chains for line in lines]
        spots = sorted(rng.random() for _ in statements)  # in order: each copy comes after its source

        def build(n: int) -> str:
            lines = [T.NOISE] * n
            for spot, line in sorted(zip(spots, statements), reverse=True):
                lines.insert(int(spot * (n + 1)), line)
            return T.VT_INTRO + "\n\n" + "\n".join(lines)

        target = budget(tokenizer, length, question, prefix, self.max_new_tokens)
        _, context = fit_units(tokenizer, target, build, target // 25)
        return Sample(self.name, index, context, question, tuple(names), ALL, prefix, verbatim=True,
                      meta={"value": val, "statements": len(statements)})
