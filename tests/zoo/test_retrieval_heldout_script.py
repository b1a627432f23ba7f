"""training/retrieval_heldout.py: cells parse or fail with a typed error, and a run loads exactly."""

from __future__ import annotations

import pytest
import torch

from kvstack.errors import InputError


@pytest.fixture(scope="module")
def script():
    from training import retrieval_heldout

    return retrieval_heldout


def test_cells_parse(script):
    assert script.parse_cell("multikey@4096x40") == ("multikey", 4096, 40)
    assert script.parse_cell("1024x48")[1:] == (1024, 48)


@pytest.mark.parametrize("bad", ["multikey@4096", "multikey@4kx40", "x"])
def test_bad_cells_raise_a_typed_error(script, bad):
    with pytest.raises(InputError, match="not task@LENGTHxN"):
        script.parse_cell(bad)


def test_bad_run_missing_data_and_empty_folder_raise_typed_errors(script, tmp_path):
    with pytest.raises(InputError, match="NAME=FOLDER"):
        script.main(["--run", "r6"])
    with pytest.raises(InputError, match="is missing"):
        script.main(["--run", f"a={tmp_path}", "--data", str(tmp_path / "none.jsonl.xz")])
    with pytest.raises(InputError, match="no weights"):
        script.load_run(tmp_path)


def test_a_run_loads_the_shipped_weights_exactly(script):
    from safetensors.torch import load_file

    from kvstack.zoo import SHIPPED

    model = script.load_run(SHIPPED / "kvstack-retrieval")
    state = load_file(str(SHIPPED / "kvstack-retrieval" / "model.safetensors"))
    params = dict(model.named_parameters())
    shared = [k for k in state if k in params]
    assert len(shared) >= len(params) - 1  # every trained tensor (a tied head may be absent from the file)
    assert all(torch.equal(params[k].detach(), state[k].float()) for k in shared)
