"""Time to first token when a context travels over a link: (a) its text, re-prefilled by the
receiver; (b) its fp16 cache; (c) its cache compressed by each recipe and wire-encoded; and,
with a deadline, (d) the bandwidth-adaptive plan of :mod:`kvstack.linkbench.adapt`.

Every path goes over a real loopback HTTP link (:class:`LoopbackLink`, one server per path: the
store is content-addressed, one cache per model and context): TTFT = request + shaped
transfer (decoding overlapped, chunk by chunk, each layer moved to the model's device as it
completes) + the question's prefill and first token. The run has two phases:

1. per context and path: compress, encode, store, then pull *unshaped* (after one warm-up pull per
   path on the first context) - the measured components of :mod:`kvstack.linkbench.derive`;
2. per cell (context x path x bandwidth), cheapest first: shape the link for real when the cell's
   link time is within ``max_transfer_s`` and it fits the time budget, else derive it from the
   components. Rows say which (``how``), and measured rows carry the derived value beside them.

Accuracy is the eval harness's ``niah_single`` on the same model, from caches that went through
the wire format; a random-weight model (``random:<preset>``) gets random contexts and no accuracy.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kvstack.errors import InputError
from kvstack.linkbench.adapt import Costs, Plan, choose, plan_recipe
from kvstack.linkbench.costs import GROUP, LEVELS, best_seconds, measure_costs
from kvstack.linkbench.derive import Components, derived_receive, derived_ttft, should_measure, transfer_seconds
from kvstack.linkbench.link import LinkPool, LoopbackLink, gbits
from kvstack.linkbench.models import is_random, random_prompt
from kvstack.linkbench.payload import FP16, TEXT, Payload, encode, save_payload, text_blob
from kvstack.linkbench.receiver import Receiver, answer_contains

MEASURED, DERIVED = "measured", "derived"


@dataclass
class TtftSpec:
    """What to measure; ``bandwidths`` in Gbit/s, ``deadline_ms`` enables the adaptive plan.

    ``max_transfer_s``: cells whose link time (bytes / rate) is longer are derived, not shaped;
    ``budget_s``: no shaped cell starts that would end after this many seconds of the run.
    """

    model: str = "kvstack-retrieval"
    tokens: list[int] = field(default_factory=lambda: [4096])
    recipes: list[str] = field(default_factory=lambda: ["int8", "int4", "snapkv:0.25 > int4", "streaming > int4"])
    bandwidths: list[float] = field(default_factory=lambda: [0.1, 1.0, 10.0])
    samples: int = 3
    repeat: int = 1
    deadline_ms: float | None = None
    seed: int = 0
    save_dir: str | None = None  # write every payload sent to <save_dir>/<path>.kvw
    device: str = "cpu"
    chunk_size: int = 1024  # prefill chunk when compressing
    question_tokens: int = 64  # random models: the question's length
    max_transfer_s: float | None = None
    budget_s: float | None = None
    store: str | None = None  # parent directory of the loopback server's store (default: the temp dir)

    def __post_init__(self) -> None:
        if isinstance(self.tokens, int):
            self.tokens = [self.tokens]

    def check(self) -> None:
        from kvstack.stack import Recipe

        if not self.tokens or min(self.tokens) < 64 or len(set(self.tokens)) != len(self.tokens):
            raise InputError(f"--tokens {self.tokens}: give distinct context lengths of at least 64 tokens")
        if not self.bandwidths or min(self.bandwidths) <= 0:
            raise InputError("--bandwidth: give one or more positive rates in Gbit/s, e.g. 0.1 1 10")
        if self.samples < 1 or self.repeat < 1 or self.question_tokens < 1 or self.chunk_size < 1:
            raise InputError("--samples, --repeat, --question-tokens and --chunk-size must be at least 1")
        if self.deadline_ms is not None and self.deadline_ms <= 0:
            raise InputError(f"--deadline {self.deadline_ms}: give a positive number of milliseconds")
        for name, value in (("--max-transfer-s", self.max_transfer_s), ("--budget-s", self.budget_s)):
            if value is not None and not value > 0:
                raise InputError(f"{name} {value}: give a positive number of seconds")
        if self.deadline_ms is not None and is_random(self.model):
            raise InputError("--deadline chooses levels by measured damage, which random weights make meaningless; "
                             "drop --deadline for a random:<preset> model")
        if len(set(self.recipes)) != len(self.recipes) or {TEXT, FP16} & set(self.recipes):
            raise InputError("--recipes: list each recipe once; text and fp16 are always measured")
        for r in self.recipes:
            Recipe.parse(r)


@dataclass
class Row:
    """One payload of one context at one bandwidth; ``how`` says whether the link was shaped for real."""

    tokens: int  # context tokens
    gbit: float
    name: str
    bytes: int
    ttft_s: float
    receive_s: float  # request to decoded cache on the device (transfer and decode overlapped)
    answer_s: float  # cache -> first token (the text path: prefill of everything)
    link_rate: float | None  # achieved bytes/s of the shaped transfer (None when derived)
    how: str = MEASURED
    derived_s: float = 0.0  # what the components predict (equal to ttft_s when derived)
    accuracy: float | None = None
    predicted_s: float | None = None  # the adaptive chooser's prediction
    meets: bool | None = None


@dataclass
class Result:
    spec: TtftSpec
    rows: list[Row]
    components: dict[tuple[int, str], Components]  # (context tokens, path)
    encode_s: dict[tuple[int, str], float]  # sender side: seconds to encode each payload
    accuracy: dict[tuple[int, str], float]  # empty for random models
    plans: dict[tuple[int, float], Plan] = field(default_factory=dict)  # (context tokens, Gbit/s)
    costs: dict[int, Costs] = field(default_factory=dict)

    @property
    def contexts(self) -> list[int]:
        return sorted({r.tokens for r in self.rows})


@dataclass
class Sent:
    """A payload on the server: what the cells of one path pull."""

    payload: Payload  # its name decides how it is answered; blob dropped once pushed
    label: str
    link: LoopbackLink  # the server holding it (one per path: see LinkPool)
    key: str
    nbytes: int
    encode_s: float = 0.0  # sender side, ahead of time: cache -> wire bytes
    components: Components | None = None
    gbit: float | None = None  # adaptive plans run at their own bandwidth only
    predicted_s: float | None = None


@dataclass
class Context:
    tokens: int
    prompt: object
    samples: list | None
    sent: list[Sent]
    plans: dict[float, Plan]
    costs: Costs | None


def _plan_name(plan: Plan) -> str:
    return f"adaptive: {plan.describe()}"


def _median_pull(receiver: Receiver, sent: Sent, question, rate: float | None, repeat: int) -> dict:
    runs = [receiver.first_token(sent.payload, sent.link, sent.key, question, rate) for _ in range(repeat)]
    if any(r["bytes"] != sent.nbytes for r in runs):
        raise InputError(f"{sent.label}: the link delivered a different byte count than was sent")
    mid = sorted(runs, key=lambda r: r["ttft"])[len(runs) // 2]
    return {**mid, "ttft": statistics.median(r["ttft"] for r in runs)}


class _Run:
    """One ``run_ttft``: the model, link and receiver shared by every context."""

    def __init__(self, spec: TtftSpec, model, tok, links: LinkPool, bar, log: Callable[[str], object]) -> None:
        self.spec, self.model, self.tok, self.links, self.bar, self.log = spec, model, tok, links, bar, log
        self.receiver = Receiver(model)

    def push(self, items: list[tuple[str, object]], server: str | None = None) -> list[Sent]:
        """Encode (caches; timed, one at a time), save and store ``(label, payload or cache)`` items:
        sender-side work, not part of TTFT. Each goes to the server named ``server`` or its label."""
        self.links.start([server or label for label, _ in items])
        out = []
        for label, what in items:
            start = time.perf_counter()
            payload = what if isinstance(what, Payload) else Payload(label, encode(what, label))
            encode_s = time.perf_counter() - start
            if self.spec.save_dir is not None:
                save_payload(self.spec.save_dir, label, payload.blob)
            link = self.links[server or label]
            out.append(Sent(payload, label, link, link.put(payload.blob), len(payload.blob), encode_s))
        return out

    def components(self, sent: Sent, question, warmup: bool, tokens: int) -> None:
        if warmup:
            self.receiver.first_token(sent.payload, sent.link, sent.key, question, None)
            self.bar.update(1)
        r = _median_pull(self.receiver, sent, question, None, self.spec.repeat)
        sent.components = Components(sent.nbytes, r["receive"], r["answer"])
        self.log(f"{tokens} tokens, {sent.label}: {sent.nbytes:,} B, encode {sent.encode_s * 1e3:.0f} ms, unshaped "
                 f"receive {r['receive'] * 1e3:.0f} ms, answer {r['answer'] * 1e3:.0f} ms")
        sent.payload = Payload(sent.payload.name, b"")  # the server has it; free the sender's copy
        self.bar.update(self.spec.repeat)

    def prepare(self, tokens: int, warmup: bool) -> Context:
        """Phase 1 for one context: payloads pushed and their components measured."""
        import kvstack
        from kvstack import wire
        from kvstack.eval.prompt import format_sample
        from kvstack.eval.tasks import get_task
        from kvstack.stack import Recipe

        spec = self.spec
        if self.tok is None:
            vocab = self.model.config.get_text_config(decoder=True).vocab_size
            prompt, samples = random_prompt(vocab, tokens, spec.question_tokens, spec.seed), None
        else:
            samples = get_task("niah_single").samples(self.tok, tokens, spec.samples, spec.seed)
            prompt = format_sample(self.tok, samples[0])
        names = [FP16, *spec.recipes]
        level_recipes = [f"{lv}:g{GROUP}" for lv in LEVELS] if spec.deadline_ms is not None else []
        caches = []
        for name, (_, cache) in zip([*names, *level_recipes], kvstack.compress_many(
                self.model, prompt.context_ids, [Recipe.parse(n) for n in [*names, *level_recipes]],
                chunk_size=spec.chunk_size)):
            if isinstance(cache, Exception):
                raise cache
            caches.append((name, cache))
        start = time.perf_counter()
        text = Payload(TEXT, text_blob(caches[0][1], prompt.context_ids))
        text_encode_s = time.perf_counter() - start
        level_blobs = {lv: encode(cache, name) for lv, (name, cache) in zip(LEVELS, caches[len(names):])}
        n = int(prompt.context_ids.numel())
        sent = self.push([(TEXT, text), *caches[:len(names)]])
        sent[0].encode_s = text_encode_s
        del caches
        for s in sent:
            self.components(s, prompt.question_ids, warmup, n)

        plans: dict[float, Plan] = {}
        costs = None
        if spec.deadline_ms is not None:
            mid_level = wire.decode(level_blobs[LEVELS[1]])
            first = best_seconds(lambda: kvstack.generate(self.model, mid_level, prompt.question_ids, max_new_tokens=1))
            costs = measure_costs(self.model, prompt, level_blobs, first, sent[0].components.answer_s, sent[0].nbytes,
                                  progress=False)
            for gbit, rate in zip(spec.bandwidths, map(gbits, spec.bandwidths)):
                plan = plans[gbit] = choose(costs, rate, spec.deadline_ms / 1000)
                if plan.is_text:
                    item: tuple[str, object] = (_plan_name(plan), Payload(TEXT, text.blob))
                else:
                    item = (_plan_name(plan), kvstack.compress(self.model, prompt.context_ids, plan_recipe(plan, GROUP),
                                                               chunk_size=spec.chunk_size))
                s = self.push([item], server=f"adaptive@{gbit}")[0]  # plans of equal name may differ
                s.gbit, s.predicted_s = gbit, plan.predicted_s
                self.components(s, prompt.question_ids, True, n)
                sent.append(s)
        return Context(n, prompt, samples, sent, plans, costs)

    def cells(self, contexts: list[Context], end: float | None) -> list[Row]:
        """Phase 2: every cell, cheapest first; shaped for real where allowed, else derived."""
        spec = self.spec
        todo = []
        for ctx in contexts:
            for s in ctx.sent:
                for gbit in spec.bandwidths if s.gbit is None else [s.gbit]:
                    todo.append((derived_ttft(s.components, gbits(gbit)), ctx, s, gbit))
        rows = []
        for predicted, ctx, s, gbit in sorted(todo, key=lambda t: t[0]):
            rate, c = gbits(gbit), s.components
            if should_measure(transfer_seconds(s.nbytes, rate), predicted, spec.repeat, time.perf_counter(), end,
                              spec.max_transfer_s):
                r = _median_pull(self.receiver, s, ctx.prompt.question_ids, rate, spec.repeat)
                row = Row(ctx.tokens, gbit, s.label, s.nbytes, r["ttft"], r["receive"], r["answer"], r["rate"],
                          MEASURED, predicted)
            else:
                row = Row(ctx.tokens, gbit, s.label, s.nbytes, predicted, derived_receive(c, rate), c.answer_s, None,
                          DERIVED, predicted)
            row.predicted_s = s.predicted_s
            rows.append(row)
            self.log(f"{ctx.tokens} tokens, {gbit:g} Gbit/s, {s.label}: TTFT {row.ttft_s * 1e3:.0f} ms ({row.how})")
            self.bar.update(spec.repeat)
        return rows


def run_ttft(spec: TtftSpec, model, tok, *, progress: bool = True, start: float | None = None,
             log: Callable[[str], object] = lambda line: None) -> Result:
    """Measure every path of every context (components, then cells), and accuracy for a trained model
    (``tok`` None: a random model). ``start``: the ``time.perf_counter()`` the budget counts from;
    ``log`` gets a line per component and cell as it is measured (a long run that dies keeps them)."""
    from tqdm.auto import tqdm

    spec.check()
    start = time.perf_counter() if start is None else start
    end = None if spec.budget_s is None else start + spec.budget_s
    paths = 2 + len(spec.recipes)
    adaptive = len(spec.bandwidths) if spec.deadline_ms is not None else 0
    steps = paths + (paths + adaptive) * len(spec.tokens) * spec.repeat + adaptive * len(spec.tokens)
    steps += (paths * len(spec.bandwidths) + adaptive) * len(spec.tokens) * spec.repeat
    bar = tqdm(total=steps, desc="ttft", unit="pull", disable=not progress)
    with LinkPool(spec.store) as links:
        run = _Run(spec, model, tok, links, bar, log)
        contexts = [run.prepare(n, warmup=i == 0) for i, n in enumerate(spec.tokens)]
        rows = run.cells(contexts, end)
    bar.close()

    accuracy: dict[tuple[int, str], float] = {}
    if tok is not None:
        for ctx in contexts:
            for name, value in _accuracy(spec, model, tok, ctx, progress).items():
                accuracy[(ctx.tokens, name)] = value
    for row in rows:
        row.accuracy = accuracy.get((row.tokens, row.name))
        if spec.deadline_ms is not None:
            row.meets = row.ttft_s * 1000 <= spec.deadline_ms
    order = {s.label: i for i, s in enumerate(contexts[0].sent)}
    rows.sort(key=lambda r: (r.tokens, r.gbit, order.get(r.name, len(order)), r.name))
    return Result(spec, rows, {(c.tokens, s.label): s.components for c in contexts for s in c.sent},
                  {(c.tokens, s.label): s.encode_s for c in contexts for s in c.sent}, accuracy,
                  {(c.tokens, g): p for c in contexts for g, p in c.plans.items()},
                  {c.tokens: c.costs for c in contexts if c.costs is not None})


def _accuracy(spec: TtftSpec, model, tok, ctx: Context, progress: bool) -> dict[str, float]:
    """``contains`` of ``niah_single`` per path, averaged over the samples, from wire round trips."""
    from tqdm.auto import tqdm

    import kvstack
    from kvstack import wire
    from kvstack.eval.prompt import format_sample
    from kvstack.eval.tasks import get_task
    from kvstack.stack import Recipe

    task = get_task("niah_single")
    names = [FP16, *spec.recipes]
    kv_plans = {_plan_name(p): p for p in ctx.plans.values() if not p.is_text}
    text_plans = {_plan_name(p) for p in ctx.plans.values() if p.is_text}
    scores: dict[str, list[float]] = {n: [] for n in [TEXT, *names, *kv_plans, *text_plans]}
    bar = tqdm(total=len(ctx.samples), desc=f"accuracy {ctx.tokens}", unit="sample", disable=not progress)
    for sample in ctx.samples:
        prompt = format_sample(tok, sample)

        def score(name, cache, sample=sample, prompt=prompt):
            back = None if cache is None else wire.decode(encode(cache, name))
            scores[name].append(answer_contains(model, tok, sample, prompt, name, back, task.max_new_tokens))

        score(TEXT, None)
        for n in text_plans:
            scores[n].append(scores[TEXT][-1])
        recipes = [*names, *(plan_recipe(p, GROUP) for p in kv_plans.values())]
        for name, (_, cache) in zip([*names, *kv_plans], kvstack.compress_many(
                model, prompt.context_ids, [Recipe.parse(r) for r in recipes], chunk_size=spec.chunk_size)):
            if isinstance(cache, Exception):
                raise cache
            score(name, cache)
        bar.update(1)
    bar.close()
    return {n: sum(v) / len(v) for n, v in scores.items() if v}
