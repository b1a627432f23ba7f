"""Batched caches: B ragged sequences in one KVBatch, answered by ONE batched ``model.generate``.

Every row must equal the one-sequence call on the same context and question (greedy, fp32),
across recipes that exercise what the batched layer must keep per sequence: per-head ragged
budgets, sliding-window trimming (Gemma 2), KIVI decode blocks, query-aware selection.
"""

from __future__ import annotations

import pytest
import torch

import kvstack
from kvstack.kv_batch import KVBatch
from kvstack.wire import cache_differences

CTX_LENGTHS = (40, 7, 66)  # one shorter than Gemma 2's sliding window of 8
Q_LENGTHS = (5, 1, 9)
NEW = 10

RECIPES = {
    "llama": ("identity", "snapkv:0.5,window=4,alloc=adakv > int8", "kivi:2,group=4,residual=4"),
    "qwen2": ("streaming:sink=2,window=12", "q2c:0.5"),
    "gemma2": ("identity", "streaming:sink=2,window=12 > int8"),
}
CASES = [(arch, recipe) for arch, recipes in RECIPES.items() for recipe in recipes]


def _inputs(make_ids):
    ctxs = [make_ids(n, seed=10 + n) for n in CTX_LENGTHS]
    qs = [make_ids(n, seed=50 + n) for n in Q_LENGTHS]
    return ctxs, qs


class GenerateCalls:
    """Counts ``model.generate`` calls and the batch size each one ran."""

    def __init__(self, model) -> None:
        self.sizes: list[int] = []
        inner = model.generate

        def counted(*args, **kwargs):
            self.sizes.append(int(kwargs["input_ids"].shape[0]))
            return inner(*args, **kwargs)

        model.generate = counted


@pytest.mark.parametrize(("arch", "recipe"), CASES)
def test_batched_generate_equals_each_single_call(tiny_model, make_ids, arch, recipe):
    model = tiny_model(arch)
    ctxs, qs = _inputs(make_ids)
    asks = qs if recipe.startswith("q2c") else None
    batch = kvstack.compress(model, ctxs, recipe, question_ids=asks)
    singles = [
        kvstack.compress(model, c, recipe, question_ids=None if asks is None else q)
        for c, q in zip(ctxs, qs, strict=True)
    ]
    want = [kvstack.generate(model, s, q, max_new_tokens=NEW) for s, q in zip(singles, qs, strict=True)]
    calls = GenerateCalls(model)
    got = kvstack.generate(model, batch, qs, max_new_tokens=NEW)
    assert calls.sizes == [len(ctxs)], "the batch must run as one model.generate over all its rows"
    assert isinstance(got, list) and len(got) == len(ctxs)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert torch.equal(g, w), f"sequence {i}: batched {g.tolist()} != single {w.tolist()}"
    # the batch is the same data as the single calls, and generation left it untouched
    for i, single in enumerate(singles):
        assert cache_differences(batch[i], single) == [], f"sequence {i} differs from its own compress call"


@pytest.mark.parametrize("arch", ["mistral", "mistral_swa", "qwen3", "gemma3", "phi3"])
def test_every_other_tiny_architecture_batches_exactly(tiny_model, make_ids, arch):
    model = tiny_model(arch)
    ctxs, qs = _inputs(make_ids)
    batch = kvstack.compress(model, ctxs, "int8")
    got = kvstack.generate(model, batch, qs, max_new_tokens=NEW)
    assert [g.tolist() for g in got] == [
        kvstack.generate(model, batch[i], qs[i], max_new_tokens=NEW).tolist() for i in range(len(batch))
    ]


def test_ragged_heads_really_differ_in_the_batch(tiny_model, make_ids):
    """The adakv case above is only worth something if heads keep different counts per sequence."""
    model = tiny_model("llama")
    ctxs, _ = _inputs(make_ids)
    batch = kvstack.compress(model, ctxs, "snapkv:0.5,window=4,alloc=adakv > int8")
    assert any(len(set(layer.lengths)) > 1 for layer in batch[2].layers)
    assert len({batch[i].layers[0].lengths for i in range(len(batch))}) == len(batch)  # own budgets


def test_container_sums_and_indexes(tiny_model, make_ids):
    model = tiny_model("llama")
    ctxs, _ = _inputs(make_ids)
    batch = kvstack.compress(model, ctxs, "int8")
    assert isinstance(batch, KVBatch) and len(batch) == len(ctxs)
    assert batch.context_lengths == list(CTX_LENGTHS)
    assert batch.nbytes == sum(batch[i].nbytes for i in range(len(batch)))
    assert batch.dense_nbytes == sum(c.dense_nbytes for c in batch)
    assert batch.ratio_vs("fp16") == pytest.approx(
        sum(c.dense_nbytes_as(torch.float16) for c in batch) / batch.nbytes
    )
    # ragged: nothing padded - the bytes grow with each sequence's own length
    assert batch[1].nbytes < batch[0].nbytes < batch[2].nbytes
    # a single tensor (or list of ints) still means one sequence
    one = kvstack.compress(model, ctxs[0], "int8")
    assert isinstance(one, kvstack.KVCache)
    assert isinstance(kvstack.compress(model, ctxs[0].tolist(), "int8"), kvstack.KVCache)
    assert cache_differences(one, batch[0]) == []
    # a list of lists of ints is a batch too; a list holding one sequence is a batch of one
    as_lists = kvstack.compress(model, [c.tolist() for c in ctxs[:2]], "int8")
    assert isinstance(as_lists, KVBatch) and as_lists.context_lengths == list(CTX_LENGTHS[:2])
    assert len(kvstack.compress(model, [ctxs[0]], "int8")) == 1


def test_eos_cuts_each_row_where_the_single_call_stops(tiny_model, make_ids):
    model = tiny_model("llama")
    ctxs, qs = _inputs(make_ids)
    batch = kvstack.compress(model, ctxs, "identity")
    free = kvstack.generate(model, batch[0], qs[0], max_new_tokens=NEW)
    stop = int(free[3])  # sequence 0 stops at its 4th token; the others run on (or stop elsewhere)
    want = [kvstack.generate(model, batch[i], qs[i], max_new_tokens=NEW, eos_token_id=stop) for i in range(3)]
    got = kvstack.generate(model, batch, qs, max_new_tokens=NEW, eos_token_id=stop)
    assert want[0].numel() <= 4 and int(want[0][-1]) == stop
    assert [g.tolist() for g in got] == [w.tolist() for w in want]


def test_sampling_arguments_reach_model_generate(tiny_model, make_ids):
    model = tiny_model("qwen2")
    ctxs, qs = _inputs(make_ids)
    batch = kvstack.compress(model, ctxs, "int8")
    greedy = kvstack.generate(model, batch, qs, max_new_tokens=NEW)
    # top_k=1 sampling is greedy: the sampling path runs and gives the same rows
    assert [t.tolist() for t in kvstack.generate(model, batch, qs, max_new_tokens=NEW, do_sample=True, top_k=1)] == [
        t.tolist() for t in greedy
    ]
    # a batch of one, seeded, samples exactly what the one-sequence call samples
    torch.manual_seed(7)
    sampled = kvstack.generate(model, KVBatch([batch[2]]), [qs[2]], max_new_tokens=NEW, do_sample=True,
                               temperature=1.5)
    torch.manual_seed(7)
    single = kvstack.generate(model, batch[2], qs[2], max_new_tokens=NEW, do_sample=True, temperature=1.5)
    assert torch.equal(sampled[0], single)
    # a logits-processor argument applies to every row
    banned = sorted({int(t[0]) for t in greedy})
    out = kvstack.generate(model, batch, qs, max_new_tokens=NEW, suppress_tokens=banned)
    assert all(int(t[0]) not in banned for t in out)


def test_batch_is_reusable(tiny_model, make_ids):
    model = tiny_model("gemma2")
    ctxs, qs = _inputs(make_ids)
    batch = kvstack.compress(model, ctxs, "identity")
    before = batch.nbytes
    first = kvstack.generate(model, batch, qs, max_new_tokens=NEW)
    again = kvstack.generate(model, batch, list(reversed(qs)), max_new_tokens=NEW)
    assert batch.nbytes == before
    assert torch.equal(again[0], kvstack.generate(model, batch[0], qs[2], max_new_tokens=NEW))
    assert [t.tolist() for t in kvstack.generate(model, batch, qs, max_new_tokens=NEW)] == [t.tolist() for t in first]
