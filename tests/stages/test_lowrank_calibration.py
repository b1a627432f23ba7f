"""Calibrated bases: Gram-matrix fits equal the SVD of all rows, files round-trip through
safetensors + JSON (no pickle), caches count only coefficients, and another model's file is refused."""

from __future__ import annotations

import json
import struct

import pytest
import torch

import kvstack
from kvstack.errors import InputError, ModelError
from kvstack.hf.model import model_info
from kvstack.hf.prefill import prefill
from kvstack.inspect.calibrate import calibrate
from kvstack.inspect.rope import rope_tables
from kvstack.kv import KVCache, KVLayer
from kvstack.stack import Recipe, StageContext
from kvstack.stages.common.rope import NEED_ROPE
from kvstack.stages.lowrank.calibration import GramAccumulator, basis_paths, load_basis, save_basis
from kvstack.stages.lowrank.rows import JointRows, LowRankRows

H, D = 2, 16


def test_gram_fit_equals_the_svd_of_every_row_stacked():
    g = torch.Generator().manual_seed(0)
    scale = torch.logspace(0, -1.5, D, dtype=torch.float64)
    seqs = [torch.randn(H, n, D, generator=g, dtype=torch.float64) * scale for n in (30, 50)]
    acc = GramAccumulator()
    for x in seqs:
        layer = KVLayer.from_dense(x, 2 * x)
        acc.add(KVCache([layer], torch.zeros(x.shape[1], dtype=torch.int32), torch.float64))
    out = acc.tensors(num_layers=1, num_heads=H)
    assert acc.tokens == 80 and acc.sequences == 2
    for h in range(H):
        rows = torch.cat([x[h] for x in seqs])
        _, s, vh = torch.linalg.svd(rows, full_matrices=False)
        torch.testing.assert_close(out["svd.k.0.s"][h].double(), s, rtol=1e-5, atol=0)
        for r in (1, 4, 9):  # same subspaces: equal projectors
            mine, ref = out["svd.k.0"][h][:, :r].double(), vh[:r].T
            torch.testing.assert_close(mine @ mine.T, ref @ ref.T, atol=1e-5, rtol=0)
    joint = torch.cat([torch.cat([x.transpose(0, 1).reshape(-1, H * D), 2 * x.transpose(0, 1).reshape(-1, H * D)], 1)
                       for x in seqs])
    s = torch.linalg.svdvals(joint)  # rank 32 of 64: the Gram route resolves zeros to ~sqrt(eps) * s[0]
    torch.testing.assert_close(out["latent.0.s"].double(), s, rtol=1e-5, atol=1e-6 * float(s[0]))


def test_files_round_trip_without_pickle(tmp_path):
    tensors = {"svd.k.0": torch.randn(H, D, D), "svd.k.0.s": torch.rand(H, D)}
    st, js = save_basis(tmp_path / "b", tensors, {"model_fingerprint": "abc", "num_layers": 1})
    assert (st, js) == basis_paths(tmp_path / "b.safetensors") == basis_paths(tmp_path / "b.json")
    raw = st.read_bytes()
    header_len = struct.unpack("<Q", raw[:8])[0]  # safetensors: a length, a JSON header, raw tensor bytes
    header = json.loads(raw[8 : 8 + header_len])
    assert header["svd.k.0"]["shape"] == [H, D, D] and header["svd.k.0"]["dtype"] == "F32"
    meta = json.loads(js.read_text())
    assert meta["format"] == "kvstack-lowrank-basis" and meta["model_fingerprint"] == "abc"
    loaded = load_basis(tmp_path / "b")
    assert all(torch.equal(loaded.tensors[k], v) for k, v in tensors.items())


def test_missing_and_broken_files_say_what_to_do(tmp_path):
    with pytest.raises(InputError, match="does not exist.*kvstack calibrate"):
        load_basis(tmp_path / "none")
    save_basis(tmp_path / "b", {"x": torch.zeros(1)}, {"model_fingerprint": "abc"})
    (tmp_path / "b.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_basis(tmp_path / "b")
    (tmp_path / "b.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(InputError, match="not a kvstack low-rank basis"):
        load_basis(tmp_path / "b")
    with pytest.raises(InputError, match="model_fingerprint"):
        save_basis(tmp_path / "c", {"x": torch.zeros(1)}, {})


_CALIBRATED: dict = {}


@pytest.fixture
def basis_file(tmp_path_factory, tiny_model, make_ids):
    """A basis calibrated on three random sequences of the tiny Llama (rotary tables included), fitted once."""
    model = tiny_model("llama")  # same seed, same weights every time
    if not _CALIBRATED:
        tensors, description = calibrate(model, [make_ids(40, seed=s) for s in range(3)], "random ids")
        assert description["pre_rope"] and description["calibration"]["tokens"] == 120
        path = tmp_path_factory.mktemp("calibrated") / "basis"
        save_basis(path, tensors, description)
        _CALIBRATED["path"] = path
    return model, _CALIBRATED["path"], load_basis(_CALIBRATED["path"])


@torch.no_grad()
def test_calibrated_svd_counts_only_coefficients_and_projects_on_the_file_basis(basis_file, make_ids):
    model, path, basis = basis_file
    ids, r = make_ids(30, seed=9), 5
    cache = kvstack.compress(model, ids, f"svd:rank={r},sink=0,basis={path}")
    full = kvstack.compress(model, ids, "identity")
    assert cache.nbytes == 2 * 2 * H * 30 * r * 4  # layers x (K, V) x rows x r fp32 coefficients; no basis
    for i, (layer, ref) in enumerate(zip(cache.layers, full.layers)):
        assert isinstance(layer.keys, LowRankRows) and not layer.keys.owns_basis
        assert layer.keys.basis.untyped_storage().data_ptr() == basis.tensors[f"svd.k.{i}"].untyped_storage().data_ptr()
        x = ref.keys.decode().view(H, 30, D)
        for h in range(H):
            b = basis.tensors[f"svd.k.{i}"][h][:, :r].double()
            hand = x[h].double() @ b @ b.T
            torch.testing.assert_close(layer.keys.decode().view(H, 30, D)[h].double(), hand, atol=1e-5, rtol=0)
    assert kvstack.generate(model, cache, make_ids(3, seed=10), max_new_tokens=3).numel() >= 1


@torch.no_grad()
def test_calibrated_energy_and_latent(basis_file, make_ids):
    model, path, basis = basis_file
    cache = kvstack.compress(model, make_ids(30, seed=11), f"svd:energy=0.9,sink=0,basis={path}")
    for i, layer in enumerate(cache.layers):
        s = basis.tensors[f"svd.k.{i}.s"].double() ** 2
        need = max(int((torch.cumsum(sh, 0) / sh.sum() < 0.9 - 1e-12).sum()) + 1 for sh in s)
        assert layer.keys.rank == need  # chosen from the calibration spectrum
    lat = kvstack.compress(model, make_ids(30, seed=12), f"latent:rank=7,sink=0,basis={path}")
    keys = lat.layers[0].keys
    assert isinstance(keys, JointRows) and not keys.owns_block
    assert lat.nbytes == 2 * 30 * 7 * 4  # two layers' latents, nothing else


@torch.no_grad()
def test_calibrated_pre_rope_basis(basis_file, make_ids):
    model, path, basis = basis_file
    info = model_info(model)
    ids = make_ids(30, seed=13)
    full = prefill(model, info, ids, frozenset()).cache
    tables = rope_tables(model)
    ctx = StageContext(info.num_query_heads, info.num_kv_heads, info.head_dim, info.num_layers,
                       captures={NEED_ROPE: tables})
    out = Recipe.parse(f"svd:rank=4,rope=pre,target=k,sink=0,basis={path}").apply(full, ctx)
    pos = torch.arange(30)
    for i, layer in enumerate(out.layers):
        x = full.layers[i].keys.decode().view(H, 30, D)
        for h in range(H):
            b = basis.tensors[f"svd.kpre.{i}"][h][:, :4]
            hand = tables[i].rotate(tables[i].unrotate(x[h], pos) @ b @ b.T, pos)
            torch.testing.assert_close(layer.keys.decode().view(H, 30, D)[h], hand, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_basis_of_another_model_is_refused(basis_file, tiny_model, make_ids):
    _, path, basis = basis_file
    other = tiny_model("qwen2")  # same geometry, another model
    with pytest.raises(ModelError, match="calibrated on another model.*kvstack calibrate"):
        kvstack.compress(other, make_ids(20), f"svd:rank=4,basis={path}")
    with pytest.raises(ModelError, match=basis.fingerprint):
        kvstack.compress(other, make_ids(20), f"latent:rank=4,basis={path}")
