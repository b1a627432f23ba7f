"""Time to first token when a context travels over a link: (a) its text, re-prefilled by the
receiver; (b) its fp16 cache; (c) its cache compressed by each recipe and wire-encoded; and,
with a deadline, (d) the bandwidth-adaptive plan of :mod:`kvstack.bench.adapt`.

Every path is measured end to end over a real loopback HTTP link (:class:`LoopbackLink`):
TTFT = request + shaped transfer (decoding overlapped, chunk by chunk) + building the cache
+ the question's prefill and first token. Accuracy is the eval harness's ``niah_single`` task
on the same model, scored from caches that went through the wire format (encode, decode).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from kvstack.bench.adapt import Costs, Plan, choose, plan_recipe
from kvstack.bench.costs import GROUP, LEVELS, best_seconds, measure_costs
from kvstack.bench.link import LoopbackLink, gbits
from kvstack.bench.payload import FP16, TEXT, Payload, encode, save_payload, text_blob
from kvstack.bench.receiver import Receiver, answer_contains
from kvstack.errors import InputError


@dataclass
class TtftSpec:
    """What to measure; ``bandwidths`` in Gbit/s, ``deadline_ms`` enables the adaptive plan."""

    model: str = "kvstack-retrieval"
    tokens: int = 4096
    recipes: list[str] = field(default_factory=lambda: ["int8", "int4", "snapkv:0.25 > int4", "streaming > int4"])
    bandwidths: list[float] = field(default_factory=lambda: [0.1, 1.0, 10.0])
    samples: int = 3
    repeat: int = 1
    deadline_ms: float | None = None
    seed: int = 0
    save_dir: str | None = None  # write every payload sent to <save_dir>/<path>.kvw

    def check(self) -> None:
        from kvstack.stack import Recipe

        if self.tokens < 64:
            raise InputError(f"--tokens {self.tokens}: give at least 64 context tokens")
        if not self.bandwidths or min(self.bandwidths) <= 0:
            raise InputError("--bandwidth: give one or more positive rates in Gbit/s, e.g. 0.1 1 10")
        if self.samples < 1 or self.repeat < 1:
            raise InputError("--samples and --repeat must be at least 1")
        if self.deadline_ms is not None and self.deadline_ms <= 0:
            raise InputError(f"--deadline {self.deadline_ms}: give a positive number of milliseconds")
        if len(set(self.recipes)) != len(self.recipes) or {TEXT, FP16} & set(self.recipes):
            raise InputError("--recipes: list each recipe once; text and fp16 are always measured")
        for r in self.recipes:
            Recipe.parse(r)


@dataclass
class Row:
    """One payload at one bandwidth."""

    gbit: float
    name: str
    bytes: int
    ttft_s: float
    receive_s: float  # request to decoded cache (transfer and decode overlapped)
    answer_s: float  # cache -> first token (the text path: prefill of everything)
    link_rate: float  # achieved bytes/s of the shaped transfer
    accuracy: float | None = None
    predicted_s: float | None = None
    meets: bool | None = None


@dataclass
class Result:
    spec: TtftSpec
    rows: list[Row]
    accuracy: dict[str, float]
    plans: dict[float, Plan] = field(default_factory=dict)
    costs: Costs | None = None
    context_tokens: int = 0


def _plan_name(plan: Plan) -> str:
    return f"adaptive: {plan.describe()}"


def run_ttft(spec: TtftSpec, model, tok, *, progress: bool = True) -> Result:
    """Measure every path at every bandwidth (sample 0's context) and every path's accuracy."""
    from tqdm.auto import tqdm

    import kvstack
    from kvstack import wire
    from kvstack.eval.prompt import format_sample
    from kvstack.eval.tasks import get_task
    from kvstack.stack import Recipe

    spec.check()
    task = get_task("niah_single")
    samples = task.samples(tok, spec.tokens, spec.samples, spec.seed)
    prompts = [format_sample(tok, s) for s in samples]
    p0 = prompts[0]
    names = [FP16, *spec.recipes]
    level_recipes = [f"{lv}:g{GROUP}" for lv in LEVELS] if spec.deadline_ms is not None else []
    blobs: dict[str, bytes] = {}
    some_cache = None
    for name, (_, cache) in zip([*names, *level_recipes], kvstack.compress_many(
            model, p0.context_ids, [Recipe.parse(n) for n in [*names, *level_recipes]])):
        if isinstance(cache, Exception):
            raise cache
        blobs[name] = encode(cache, name)
        some_cache = cache
    payloads = [Payload(TEXT, text_blob(some_cache, p0.context_ids))]
    payloads += [Payload(n, blobs[n]) for n in names]

    rates = [gbits(g) for g in spec.bandwidths]
    # one warm-up pull per payload, then `repeat` per bandwidth; each adaptive plan at its own bandwidth only
    steps = len(payloads) * (len(rates) * spec.repeat + 1)
    steps += len(rates) * (spec.repeat + 1) if spec.deadline_ms is not None else 0
    bar = tqdm(total=steps, desc="ttft", unit="pull", disable=not progress)
    rows: list[Row] = []
    unshaped: dict[str, dict] = {}
    with LoopbackLink() as link:
        receiver = Receiver(model, link)

        def measure_payload(payload: Payload, gbit_rates: list[tuple[float, float]], label: str = "") -> list[Row]:
            label = label or payload.name
            if spec.save_dir is not None:
                save_payload(spec.save_dir, label, payload.blob)
            key = link.push(payload.blob)
            unshaped[payload.name] = receiver.first_token(payload, key, p0.question_ids, None)  # warm-up
            bar.update(1)
            out = []
            for gbit, rate in gbit_rates:
                runs = []
                for _ in range(spec.repeat):
                    runs.append(receiver.first_token(payload, key, p0.question_ids, rate))
                    bar.update(1)
                if any(r["bytes"] != len(payload.blob) for r in runs):
                    raise InputError(f"{payload.name}: the link delivered a different byte count than was sent")
                mid = sorted(runs, key=lambda r: r["ttft"])[len(runs) // 2]
                out.append(Row(gbit, label, len(payload.blob), statistics.median(r["ttft"] for r in runs),
                               mid["receive"], mid["answer"], mid["rate"]))
            return out

        for payload in payloads:
            rows += measure_payload(payload, list(zip(spec.bandwidths, rates)))

        plans: dict[float, Plan] = {}
        costs = None
        if spec.deadline_ms is not None:
            mid_level = wire.decode(blobs[level_recipes[1]])
            first = best_seconds(lambda: kvstack.generate(model, mid_level, p0.question_ids, max_new_tokens=1))
            costs = measure_costs(model, p0, dict(zip(LEVELS, (blobs[r] for r in level_recipes))), first,
                                  unshaped[TEXT]["answer"], len(payloads[0].blob), progress)
            for gbit, rate in zip(spec.bandwidths, rates):
                plan = plans[gbit] = choose(costs, rate, spec.deadline_ms / 1000)
                if plan.is_text:
                    payload = payloads[0]
                else:
                    cache = kvstack.compress(model, p0.context_ids, plan_recipe(plan, GROUP))
                    payload = Payload("adaptive", encode(cache, "adaptive"))
                for row in measure_payload(payload, [(gbit, rate)], _plan_name(plan)):
                    row.predicted_s = plan.predicted_s
                    rows.append(row)
            for row in rows:
                row.meets = row.ttft_s * 1000 <= spec.deadline_ms
    bar.close()

    accuracy = _accuracy(spec, model, tok, task, samples, prompts, names, plans, progress)
    for row in rows:
        row.accuracy = accuracy.get(row.name)
    return Result(spec, rows, accuracy, plans, costs, int(p0.context_ids.numel()))


def _accuracy(spec, model, tok, task, samples, prompts, names, plans, progress) -> dict[str, float]:
    """``contains`` of ``niah_single`` per path, averaged over the samples, from wire round trips."""
    from tqdm.auto import tqdm

    import kvstack
    from kvstack import wire
    from kvstack.stack import Recipe

    kv_plans = {_plan_name(p): p for p in plans.values() if not p.is_text}
    text_plans = {_plan_name(p) for p in plans.values() if p.is_text}
    scores: dict[str, list[float]] = {n: [] for n in [TEXT, *names, *kv_plans, *text_plans]}
    bar = tqdm(total=len(samples), desc="accuracy", unit="sample", disable=not progress)
    for sample, prompt in zip(samples, prompts):
        def score(name, cache, sample=sample, prompt=prompt):
            back = None if cache is None else wire.decode(encode(cache, name))
            scores[name].append(answer_contains(model, tok, sample, prompt, name, back, task.max_new_tokens))

        score(TEXT, None)
        for n in text_plans:
            scores[n].append(scores[TEXT][-1])
        recipes = [*names, *(plan_recipe(p, GROUP) for p in kv_plans.values())]
        for name, (_, cache) in zip([*names, *kv_plans], kvstack.compress_many(
                model, prompt.context_ids, [Recipe.parse(r) for r in recipes])):
            if isinstance(cache, Exception):
                raise cache
            score(name, cache)
        bar.update(1)
    bar.close()
    return {n: sum(v) / len(v) for n, v in scores.items() if v}
