"""``kvstack.generate(..., graphs=True)``: kvstack's greedy step loop returns model.generate's tokens.

On the CPU the loop runs every step eagerly (CUDA graphs need CUDA); these tests check the loop
itself - positions, the padded question block of a batch, end-of-sequence handling, refusals -
against ``model.generate`` on the generic path. tests/kernels/test_graphs.py checks the fast path.
"""

from __future__ import annotations

import pytest
import torch

import kvstack
from kvstack.errors import InputError

CASES = [("llama", "snapkv:0.5,window=4 > int4"), ("llama", "kivi:2,group=4,residual=4"),
         ("qwen2", "streaming:sink=2,window=12"), ("gemma2", "int8")]


def check_loop_equals_generate(model, ctxs: list, qs: list, recipe: str, new: int) -> None:
    """The loop's tokens equal ``model.generate``'s for the first context alone and for the whole batch."""
    cache = kvstack.compress(model, ctxs[0], recipe)
    want = kvstack.generate(model, cache, qs[0], max_new_tokens=new)
    assert torch.equal(kvstack.generate(model, cache, qs[0], max_new_tokens=new, graphs=True), want)
    batch = kvstack.compress(model, ctxs, recipe)
    want = kvstack.generate(model, batch, qs, max_new_tokens=new)
    got = kvstack.generate(model, batch, qs, max_new_tokens=new, graphs=True)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


@pytest.mark.parametrize(("arch", "recipe"), CASES)
def test_one_sequence_and_a_batch_equal_model_generate(tiny_model, make_ids, arch, recipe):
    ctxs = [make_ids(n, seed=10 + n) for n in (40, 23, 66)]
    qs = [make_ids(n, seed=50 + n) for n in (5, 1, 9)]
    check_loop_equals_generate(tiny_model(arch), ctxs, qs, recipe, 8)


def test_end_of_sequence_stops_and_cuts_as_generate_does(tiny_model, make_ids):
    model = tiny_model("llama")
    cache = kvstack.compress(model, make_ids(30), "int8")
    q = make_ids(3, seed=4)
    free = kvstack.generate(model, cache, q, max_new_tokens=40)
    eos = int(free[2])  # the third token ends the answer
    want = kvstack.generate(model, cache, q, max_new_tokens=40, eos_token_id=eos)
    got = kvstack.generate(model, cache, q, max_new_tokens=40, eos_token_id=eos, graphs=True)
    assert torch.equal(got, want) and int(got[-1]) == eos and got.numel() <= 3
    # min_new_tokens forbids the end as generate's logits processor does
    want = kvstack.generate(model, cache, q, max_new_tokens=12, eos_token_id=eos, min_new_tokens=12)
    got = kvstack.generate(model, cache, q, max_new_tokens=12, eos_token_id=eos, min_new_tokens=12, graphs=True)
    assert torch.equal(got, want) and got.numel() == 12


@pytest.mark.parametrize("kwargs", [{"do_sample": True}, {"num_beams": 2}, {"top_k": 5}])
def test_sampling_and_other_options_are_refused_before_any_work(tiny_model, make_ids, kwargs):
    model = tiny_model("llama")
    cache = kvstack.compress(model, make_ids(20), "int8")
    with pytest.raises(InputError, match="graphs=True"):
        kvstack.generate(model, cache, make_ids(2), max_new_tokens=4, graphs=True, **kwargs)


def test_graphs_default_takes_the_step_loop_only_for_greedy_decoding_on_cuda():
    from kvstack.hf.step_loop import use_graphs

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert use_graphs(None, cuda, {}) is True  # the measured-faster path where it exists
    assert use_graphs(None, cuda, {"min_new_tokens": 2}) is True
    assert use_graphs(None, cpu, {}) is False  # CPU: model.generate, as before
    assert use_graphs(None, cuda, {"do_sample": True, "top_p": 0.9}) is False  # sampling: model.generate
    assert use_graphs(None, cuda, {"num_beams": 2}) is False
    assert use_graphs(False, cuda, {}) is False
    assert use_graphs(True, cpu, {}) is True  # asked for: the loop runs eagerly on a CPU
    with pytest.raises(InputError, match="graphs=True"):
        use_graphs(True, cuda, {"do_sample": True})
