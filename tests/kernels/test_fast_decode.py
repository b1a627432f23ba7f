"""``kvstack.generate`` through the kernels (packed rows, no materialization) equals the generic path."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import kvstack
from kvstack.hf import fast_decode
from kvstack.hf.compat import cache_kwargs


def _model(device):
    """A small Llama with head_dim 64, the narrowest the kernels take at 2 bits (16 channels a phase)."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=512,
                      initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval().to(device)


class _Counted:
    """A Triton kernel whose launches are counted (``off`` set: launched without counting)."""

    def __init__(self, kernel, name: str, counts: dict, pause: list) -> None:
        self.kernel, self.name, self.counts, self.pause = kernel, name, counts, pause

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.counts[self.name] = self.counts.get(self.name, 0) + 1
            self.pause.append(1)
            try:
                return self.kernel[grid](*args, **kwargs)
            finally:
                self.pause.pop()

        return launch


def _count_launches(monkeypatch, pause: list | None = None) -> dict:
    from kvstack.kernels import triton_decode

    counts: dict = {}
    for name in ("_split_kernel", "_combine_kernel"):
        monkeypatch.setattr(triton_decode, name, _Counted(getattr(triton_decode, name), name, counts,
                                                          pause if pause is not None else []))
    return counts


def _step_logits(model, cache, q_ids, steps):
    hf = kvstack.hf.CompressedCache(cache, model.dtype)
    ids, out = q_ids[None], []
    with kvstack.hf.enable(model), torch.no_grad():
        for _ in range(steps):
            logits = model(input_ids=ids, **cache_kwargs(hf), use_cache=True).logits[0, -1].float()
            ids = logits.argmax(-1).view(1, 1)
            out.append(logits)
    return torch.stack(out)


@pytest.mark.parametrize("recipe", ["int4:g32,token,norot", "snapkv:0.5,alloc=adakv > int4:g16,token,norot",
                                    "int8:g16,axis=channel", "int2:g16,axis=channel", "snapkv:0.6",
                                    "int4:g16", "snapkv:0.5 > int4:g32,token,rot,seed=5"])
def test_kernel_steps_equal_generic_steps(device, make_ids, monkeypatch, recipe):
    model = _model(device)
    ctx, q = make_ids(96).to(device), make_ids(2, seed=3).to(device)
    cache = kvstack.compress(model, ctx, recipe)
    launches = _count_launches(monkeypatch)
    fast = _step_logits(model, cache, q, 6)
    # every layer, every step took the kernel: one launch for the rows and the tail, one merge
    steps = 6 * model.config.num_hidden_layers
    assert launches == {"_split_kernel": steps, "_combine_kernel": steps}
    monkeypatch.setenv("KVSTACK_KERNELS", "0")
    generic = _step_logits(model, cache, q, 6)
    assert launches == {"_split_kernel": steps, "_combine_kernel": steps}  # and the generic run did not
    assert torch.equal(fast.argmax(-1), generic.argmax(-1))
    err = (fast - generic).norm() / generic.norm()
    assert err < 5e-3, err


def test_long_query_chunks_and_other_layers_fall_back(device, make_ids, monkeypatch):
    model = _model(device)
    cache = kvstack.compress(model, make_ids(64).to(device), "int4:g32,token,norot")
    hf = kvstack.hf.CompressedCache(cache, model.dtype)
    layer = hf.layers[0]
    long_q = torch.randn(1, 4, 40, 64, device=device)  # 2 heads x 40 tokens = 80 rows > MAX_QUERY_ROWS
    marker, _ = layer.update(torch.randn(1, 2, 40, 64, device=device), torch.randn(1, 2, 40, 64, device=device))
    step = marker._kvstack_fast
    assert step.attend(model.model.layers[0].self_attn, long_q, {}) is None
    keys, values = step.materialize()  # the generic path still sees every row, masked by true positions
    assert keys.shape[2] == values.shape[2] == 64 + 40
    assert keys._kvstack.query_positions.tolist() == list(range(64, 104))
    assert not step.tail.kernel_step  # a step that fell back is not one a CUDA graph may capture
    kivi = kvstack.compress(model, make_ids(64).to(device), "kivi:2,group=32,residual=16")
    kivi_layer = kvstack.hf.CompressedCache(kivi, model.dtype).layers[0]
    keys, _ = kivi_layer.update(torch.randn(1, 2, 1, 64, device=device), torch.randn(1, 2, 1, 64, device=device))
    assert kivi_layer.tail_k is not None  # a step was taken, yet KIVI's decode blocks keep the generic path
    assert not hasattr(keys, "_kvstack_fast") and not fast_decode.fast_ready(kivi_layer)


def test_rotated_rows_are_read_in_their_basis(device, make_ids):
    """The default int4 stores R x: the step rotates the query and the tail by R, the generic view undoes it."""
    from kvstack.rows.rotate import HadamardRows

    model = _model(device)
    cache = kvstack.compress(model, make_ids(64).to(device), "int4:g16")
    assert isinstance(cache.layers[0].keys, HadamardRows) and isinstance(cache.layers[0].values, HadamardRows)
    layer = kvstack.hf.CompressedCache(cache, model.dtype).layers[0]
    k, v = torch.randn(1, 2, 1, 64, device=device), torch.randn(1, 2, 1, 64, device=device)
    step = layer.update(k, v)[0]._kvstack_fast
    assert step.key_rot is not None and step.value_rot is not None
    stored_k, stored_v = layer.decode_tail.rows(0, basis=True)
    assert torch.allclose(stored_k, k[0] @ step.key_rot.T, atol=1e-5)
    assert torch.allclose(stored_v, v[0] @ step.value_rot.T, atol=1e-5)
    assert torch.allclose(layer.tail_k, k[0], atol=1e-5) and torch.allclose(layer.tail_v, v[0], atol=1e-5)


def test_plan_is_kept_across_steps_and_rebuilt_when_the_rows_change(device, make_ids):
    model = _model(device)
    cache = kvstack.compress(model, make_ids(64).to(device), "int4:g32,token,norot")
    layer = kvstack.hf.CompressedCache(cache, model.dtype).layers[0]
    new = lambda: torch.randn(1, 2, 1, 64, device=device)
    first, _ = layer.update(new(), new())
    second, _ = layer.update(new(), new())
    assert second._kvstack_fast.kplan is first._kvstack_fast.kplan
    layer.segments[0] = dataclasses.replace(layer.base)  # the compressed rows replaced, as trimming does
    third, _ = layer.update(new(), new())
    assert third._kvstack_fast.kplan is not first._kvstack_fast.kplan
    assert layer.tail_k.shape[1] == 3 and third._kvstack_fast.tail is first._kvstack_fast.tail  # the tail kept growing


_READS = ("_local_scalar_dense", "item", "nonzero", "masked_select", "equal", "is_nonzero", "_unique2", "tolist")


def test_decode_steps_read_nothing_back_from_the_device(device, make_ids, monkeypatch):
    """No ``.item()``/``int()``/``bool()`` of a tensor, no device-to-host copy, in a layer's update + attention."""
    from torch.utils._python_dispatch import TorchDispatchMode

    model = _model(device)
    cache = kvstack.compress(model, make_ids(80).to(device), "snapkv:0.5 > int4:g16,token,norot")
    hf = kvstack.hf.CompressedCache(cache, model.dtype)
    pause: list = []
    launches = _count_launches(monkeypatch, pause)
    reads = []

    class Reads(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if not pause:  # kvstack's own Python, not the interpreter running a kernel
                inputs = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
                to_host = (isinstance(out, torch.Tensor) and out.device.type == "cpu"
                           and any(a.device.type != "cpu" for a in inputs))
                if to_host or func.__name__.split(".")[0] in _READS:
                    reads.append(func.__name__)
            return out

    new = lambda n: torch.randn(1, 2, n, 64, device=device)
    sync = torch.cuda.set_sync_debug_mode if device.type == "cuda" else (lambda mode: None)
    # the question's tokens (plans built: one host-to-device copy), then three steps; CUDA's sync check
    # starts once every kernel this cache needs is compiled
    for step, n in enumerate((2, 1, 1, 1)):
        for i, layer in enumerate(hf.layers):
            sync("error" if step > 1 else "default")
            try:
                with Reads():
                    marker, _ = layer.update(new(n), new(n))
                    out = marker._kvstack_fast.attend(model.model.layers[i].self_attn, torch.randn(1, 4, n, 64,
                                                      device=device), {"scaling": 0.125})
            finally:
                sync("default")
            assert out is not None and out.shape == (1, n, 4, 64)
    assert reads == []
    assert launches == {"_split_kernel": 4 * len(hf.layers), "_combine_kernel": 4 * len(hf.layers)}



@pytest.mark.parametrize("recipe", ["int4:g16", "snapkv:0.5 > int4:g32,token,norot"])
def test_a_batch_decodes_through_one_launch_and_equals_each_sequence(device, make_ids, monkeypatch, recipe):
    """Ragged contexts and questions of different lengths: one kernel plan over every sequence's rows."""
    model = _model(device)
    contexts = [make_ids(n, seed=n).to(device) for n in (70, 96, 80)]
    questions = [make_ids(n, seed=10 + n).to(device) for n in (2, 4, 1)]
    batch = kvstack.compress(model, contexts, recipe)
    launches = _count_launches(monkeypatch)
    got = kvstack.generate(model, batch, questions, max_new_tokens=5)
    steps = 5 * model.config.num_hidden_layers  # the question block and 4 steps, each one launch for all three
    assert launches == {"_split_kernel": steps, "_combine_kernel": steps}
    monkeypatch.setenv("KVSTACK_KERNELS", "0")
    for i, (cache, q) in enumerate(zip(batch, questions, strict=True)):
        assert torch.equal(got[i], kvstack.generate(model, cache, q, max_new_tokens=5)), i


def test_a_batch_that_leaves_the_kernels_keeps_its_tail(device, make_ids, monkeypatch):
    """Kernels on for the question block, off for the next step: the generic path reads the shared tail."""
    from kvstack import kernels

    model = _model(device)
    batch = kvstack.compress(model, [make_ids(n, seed=n).to(device) for n in (40, 56)], "int4:g16")
    qs = [make_ids(n, seed=30 + n).to(device) for n in (3, 1)]
    want = kvstack.generate(model, batch, qs, max_new_tokens=3)  # through the kernels throughout
    calls = []
    inner = model.forward

    @functools.wraps(inner)  # generate reads the signature to know which inputs the model takes
    def forward(*args, **kwargs):  # the kernels leave after the first forward (the question block)
        calls.append(1)
        if len(calls) > 1 and device.type == "cpu":
            monkeypatch.setattr(kernels, "ALLOW_CPU", False)
        return inner(*args, **kwargs)

    monkeypatch.setattr(model, "forward", forward)
    got = kvstack.generate(model, batch, qs, max_new_tokens=3)
    assert len(calls) == 3 and all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
