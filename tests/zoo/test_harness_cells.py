"""The training script's copy of the harness cells gives the harness's own samples, prompts and answers."""

from __future__ import annotations

import json

import pytest
import torch

from kvstack.errors import InputError
from kvstack.zoo import SHIPPED
from training.harness_cells import TokenizerAdapter, greedy, harness_cell, run_cells

TOKENIZER = SHIPPED / "kvstack-retrieval" / "tokenizer.json"


@pytest.fixture(scope="module")
def hf():
    from kvstack.zoo import load

    return load("kvstack-retrieval")


@pytest.fixture(scope="module")
def train_model():
    from safetensors.torch import load_file

    from training.model import TrainLlama
    from training.train import SHAPES

    model = TrainLlama(SHAPES["shipped"])
    state = load_file(str(SHIPPED / "kvstack-retrieval" / "model.safetensors"))
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    return model.eval()


def test_adapter_builds_the_same_samples_and_prompts_as_the_hf_tokenizer(hf):
    from kvstack.eval.prompt import format_sample
    from kvstack.eval.tasks import get_task

    _, tok = hf
    adapter = TokenizerAdapter(TOKENIZER)
    for task in ("niah_multikey", "niah_single"):
        ours = get_task(task).samples(adapter, 1024, 3, seed=0)
        theirs = get_task(task).samples(tok, 1024, 3, seed=0)
        assert [s.context for s in ours] == [s.context for s in theirs]
        for a, b in zip(ours, theirs):
            pa, pb = format_sample(adapter, a), format_sample(tok, b)
            assert torch.equal(pa.context_ids, pb.context_ids) and torch.equal(pa.question_ids, pb.question_ids)
            assert int(pa.context_ids[0]) == tok.bos_token_id


def test_predictions_equal_the_harness_full_cache_answers(hf, train_model, tmp_path):
    from kvstack.eval.runner import EvalSpec, Runner

    model, tok = hf
    spec = EvalSpec("kvstack-retrieval", ["identity"], ["niah_multikey"], [512], 3, threads=1)
    out = tmp_path / "r.jsonl"
    Runner(spec, out, model=model, tokenizer=tok, progress=False, log=lambda m: None).run()
    harness = {r["index"]: r for r in map(json.loads, out.read_text().splitlines())}
    cell = harness_cell(train_model, TokenizerAdapter(TOKENIZER), "niah_multikey", 512, 3, "cpu")
    assert [r["prediction"] for r in cell["rows"]] == [harness[i]["prediction"] for i in range(3)]
    assert [r["contains"] for r in cell["rows"]] == [harness[i]["contains"] for i in range(3)]
    assert cell["contains"] == sum(harness[i]["contains"] for i in range(3)) / 3


class _Scripted(torch.nn.Module):
    """Predicts token ``script[k]`` at the k-th call, whatever the input."""

    def __init__(self, script):
        super().__init__()
        self.script, self.calls = script, 0

    def forward(self, ids):
        return ids.float().unsqueeze(-1)

    def logits(self, hidden):
        out = torch.zeros(hidden.shape[0], hidden.shape[1], 10)
        out[..., self.script[self.calls]] = 1.0
        self.calls += 1
        return out


def test_greedy_stops_at_end_of_text_and_at_the_token_budget():
    ids = torch.tensor([3, 4])
    assert greedy(_Scripted([5, 6, 0, 7]), ids, 8, eos=0, device="cpu") == [5, 6]
    assert greedy(_Scripted([5, 6, 7, 8]), ids, 3, eos=0, device="cpu") == [5, 6, 7]


def test_bad_cells_raise_input_errors(train_model):
    with pytest.raises(InputError, match="task@length"):
        run_cells(train_model, TOKENIZER, "niah_multikey", 2, "cpu")
    with pytest.raises(InputError, match="unknown task"):
        run_cells(train_model, TOKENIZER, "needles@512", 2, "cpu")
    with pytest.raises(InputError, match="continuation"):
        run_cells(train_model, TOKENIZER, "ppl@512", 2, "cpu")
    with pytest.raises(InputError, match="no '<bos>' token"):
        TokenizerAdapter(TOKENIZER, bos="<bos>")
