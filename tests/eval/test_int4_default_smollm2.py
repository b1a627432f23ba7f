"""A small guard of the default int4 layout on a real model (issue 17): on SmolLM2-135M and a
RULER multi-key prompt, the default (rotated, channel groups of 32 tokens) must keep the model's attention
focus - the most-attended context token of each (head, question query) - better than groups of 64 tokens
(the default until the fifth session, which lost more multi-key answers on held-out sets) and than the old
per-token layout, whose loss of that focus cost a fifth of the full cache's multi-key answers
on the H100 runs (benchmarks/RESULTS.md); and it must answer a RULER needle as the full cache does.
"""

from __future__ import annotations

import statistics

import torch

import kvstack
from kvstack.api import compress_many
from kvstack.eval.attention_error import attention_errors, question_queries
from kvstack.eval.prompt import format_sample
from kvstack.eval.tasks import get_task
from kvstack.stack import Recipe


def test_default_int4_keeps_smollm2s_attention_focus(smollm2):
    model, tok = smollm2
    sample = get_task("ruler_niah_multikey_1").samples(tok, 1024, 1, seed=11)[0]
    p = format_sample(tok, sample)
    recipes = ["identity", "int8", "int4", "int4:g64", "int4:token,norot"]
    caches = dict(zip(recipes, (c for _, c in compress_many(model, p.context_ids, [Recipe.parse(r) for r in recipes]))))
    queries = question_queries(model, caches["identity"], p.question_ids)  # one capture serves every cache
    changed = {r: statistics.mean(e.top1_changed for e in attention_errors(model, caches["identity"], caches[r],
                                                                          p.question_ids, queries))
               for r in recipes[1:]}
    # measured (CPU, torch 2.13): int8 0.007, default int4 (groups of 32 tokens) 0.035, the previous default
    # int4:g64 0.040, per-token int4 0.060; on seeds 12 and 13 the default's share of g64's is 0.82 and 0.71
    assert changed["int8"] < changed["int4"] < 0.95 * changed["int4:g64"], changed
    assert changed["int4"] < 0.7 * changed["int4:token,norot"], changed


def test_default_int4_answers_a_ruler_needle_like_the_full_cache(smollm2):
    model, tok = smollm2
    sample = get_task("ruler_niah_single_2").samples(tok, 1024, 1, seed=11)[0]
    p = format_sample(tok, sample)
    answers = {}
    for recipe, cache in compress_many(model, p.context_ids, [Recipe.parse("identity"), Recipe.parse("int4")]):
        ids = kvstack.generate(model, cache, p.question_ids, max_new_tokens=10)
        answers[recipe.text] = tok.decode(ids, skip_special_tokens=True)
    assert sample.answers[0] in answers["identity"]  # the full cache finds it
    assert answers["int4"] == answers["identity"]
    assert torch.is_tensor(p.context_ids)
