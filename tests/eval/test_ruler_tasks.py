"""RULER's tasks: RULER's wording, whole-sequence length budgets, answers verifiable from the
context alone, seeded samples; and the context-window check that runs before any prefill."""

from __future__ import annotations

import re
from collections import Counter

import pytest
import torch

import kvstack
from kvstack.errors import InputError
from kvstack.eval.prompt import format_sample
from kvstack.eval.runner import EvalSpec, Runner
from kvstack.eval.tasks import SUITES, get_task, suite_tasks
from kvstack.eval.tasks.ruler import templates as T
from kvstack.eval.tasks.ruler.fit import CHAT_SLACK

RULER = SUITES["ruler"]


def test_the_suite_is_rulers_twelve_tasks():
    assert len(RULER) == 12 and len(set(RULER)) == 12
    assert suite_tasks("ruler") == RULER
    with pytest.raises(InputError, match="suites: ruler"):
        suite_tasks("longbench")


@pytest.mark.parametrize("name", RULER)
@pytest.mark.parametrize("length", [1024, 2048])
def test_prompt_and_answer_fit_the_length_budget(bpe_tokenizer, name, length):
    task = get_task(name)
    for s in task.samples(bpe_tokenizer, length, 2, seed=1):
        p = format_sample(bpe_tokenizer, s)
        total = p.context_ids.numel() + p.question_ids.numel() + task.max_new_tokens
        # within the budget, and the haystack really fills it (qa packs whole ~250-token passages)
        floor = length - CHAT_SLACK - (400 if name == "ruler_qa_1" else 150)
        assert floor <= total <= length, (name, total)


@pytest.mark.parametrize("name", RULER)
def test_answers_are_in_the_context_and_the_question_is_verbatim(bpe_tokenizer, name):
    for s in get_task(name).samples(bpe_tokenizer, 1024, 3, seed=2):
        assert s.verbatim and s.answers
        for a in s.answers:
            assert a in s.context, (name, a)
        p = format_sample(bpe_tokenizer, s)
        text = bpe_tokenizer.decode(p.question_ids)
        assert "Answer briefly" not in text and s.answer_prefix in text


def test_single_needle_uses_rulers_wording(bpe_tokenizer):
    s = get_task("ruler_niah_single_2").samples(bpe_tokenizer, 1024, 1, seed=3)[0]
    key, value = s.meta["keys"][0], s.answers[0]
    assert s.context.startswith("A special magic number is hidden within the following text. Make sure to memorize it.")
    assert f"One of the special magic numbers for {key} is: {value}." in s.context
    assert s.question == f"What is the special magic number for {key} mentioned in the provided text?"
    assert s.answer_prefix == f"The special magic number for {key} mentioned in the provided text is"
    assert re.fullmatch(r"[a-z]+-[a-z]+", key) and re.fullmatch(r"\d{7}", value)


def test_multikey_haystack_of_needles_has_one_line_per_key(bpe_tokenizer):
    s = get_task("ruler_niah_multikey_2").samples(bpe_tokenizer, 1024, 1, seed=4)[0]
    found = re.findall(r"One of the special magic numbers for ([a-z]+-[a-z]+) is: (\d{7})\.", s.context)
    keys = [k for k, _ in found]
    assert len(found) >= 15 and keys.count(s.meta["keys"][0]) == 1  # every line a distractor, the key once
    assert dict(found)[s.meta["keys"][0]] == s.answers[0]


def test_multiquery_asks_all_four_keys_in_rulers_list_form(bpe_tokenizer):
    s = get_task("ruler_niah_multiquery").samples(bpe_tokenizer, 1024, 1, seed=5)[0]
    a, b, c, d = s.meta["keys"]
    asked = f"{a}, {b}, {c}, and {d}"
    assert s.question == f"What are all the special magic numbers for {asked} mentioned in the provided text?"
    assert len(s.answers) == 4 and s.mode == "all"


def test_variable_tracking_answer_is_the_whole_chain_in_order(bpe_tokenizer):
    s = get_task("ruler_vt").samples(bpe_tokenizer, 1024, 1, seed=6)[0]
    value = s.meta["value"]
    first = s.context.index(f"VAR {s.answers[0]} = {value}")
    for prev, name in zip(s.answers, s.answers[1:]):
        at = s.context.index(f"VAR {name} = VAR {prev}")
        assert at > first  # each copy comes after its source
        first = at
    assert s.answer_prefix == T.VT_PREFIX.format(num_v=5, query=value)


def test_common_words_are_strictly_the_most_frequent(bpe_tokenizer):
    s = get_task("ruler_cwe").samples(bpe_tokenizer, 2048, 1, seed=7)[0]
    words = Counter(re.findall(r"\d+\. ([a-z]+)", s.context))
    top = {w for w, _ in words.most_common(10)}
    assert top == set(s.answers)
    assert min(words[w] for w in top) > max(c for w, c in words.items() if w not in top)


def test_frequent_words_answer_is_ranks_two_to_four(bpe_tokenizer):
    s = get_task("ruler_fwe").samples(bpe_tokenizer, 2048, 1, seed=8)[0]
    counts = Counter(s.context[len(T.FWE_INTRO):].split())
    ranked = [w for w, _ in counts.most_common(5)]
    assert ranked[0] == "...." and ranked[1:4] == list(s.answers)
    assert counts[ranked[3]] > counts[ranked[4]]


def test_samples_are_seeded(bpe_tokenizer):
    task = get_task("ruler_niah_multikey_1")
    a = task.samples(bpe_tokenizer, 1024, 2, seed=9)
    assert a == task.samples(bpe_tokenizer, 1024, 2, seed=9)
    assert a[0] != task.samples(bpe_tokenizer, 1024, 2, seed=10)[0]


def test_lengths_beyond_the_window_fail_before_any_prefill(tiny_model, make_ids, bpe_tokenizer, tmp_path, monkeypatch):
    model = tiny_model("llama")  # max_position_embeddings 256
    with pytest.raises(InputError, match="at most 256 tokens"):
        kvstack.compress(model, make_ids(300), "int4")
    cache = kvstack.compress(model, make_ids(200), "identity")
    with pytest.raises(InputError, match="max_position_embeddings = 256"):
        kvstack.generate(model, cache, make_ids(40), max_new_tokens=32)

    from kvstack.hf import prefill as prefill_module

    def no_prefill(*args, **kwargs):
        raise AssertionError("prefill ran")

    monkeypatch.setattr(prefill_module, "prefill", no_prefill)
    spec = EvalSpec(model="tiny", recipes=["identity"], tasks=["ruler_niah_single_1"], lengths=[512], samples=1)
    runner = Runner(spec, tmp_path / "r.jsonl", model=model, tokenizer=bpe_tokenizer, progress=False)
    with pytest.raises(InputError, match="exceed tiny's context window of 256 tokens"):
        runner.run()
    assert not (tmp_path / "r.jsonl").exists() or (tmp_path / "r.jsonl").read_text() == ""
    assert torch.is_tensor(cache.context_ids)


def test_fitting_stops_at_the_end_of_a_finite_pool(bpe_tokenizer):
    from kvstack.eval.tasks.ruler.fit import fit_units

    # a pool of 50 words fits a 10k-token budget whole: the search returns it instead of doubling forever
    n, text = fit_units(bpe_tokenizer, 10_000, lambda k: " ".join(["essay"] * min(k, 50)), 5, most=50)
    assert n == 50 and text.count("essay") == 50


@pytest.mark.parametrize("recipe", ["int4:sink=-1", "kivi:2,sink=-4"])
def test_a_negative_sink_is_a_recipe_error(recipe):
    from kvstack.errors import RecipeError
    from kvstack.stack import Recipe

    with pytest.raises(RecipeError, match="sink=-"):
        Recipe.parse(recipe)
