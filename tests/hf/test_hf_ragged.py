"""Per-head ragged caches: each KV head keeps its own rows, in different numbers.

The compressed layer pads the shorter heads for the attention call; the hook's per-head mask
must hide the padding and each head must attend to exactly its own rows. Checked against the
hand-written float64 Llama, both on the attention output of every query head and on logits.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from hf_reference import HandLlama, append, keep_positions

import kvstack
from kvstack.hf import CompressedCache, enable
from kvstack.hf.compat import cache_kwargs

T = 32

# Kept positions per (layer, KV head): different sets and different counts in every head.
KEEP = {
    (0, 0): [0, 1, 2, 3, 9, 17, 30, 31],
    (0, 1): [5, 6, 7, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 31],
    (1, 0): [0, 31],
    (1, 1): list(range(0, T, 3)),
}


def _ragged(kv):
    def fn(index, layer):
        return layer.select_rows([torch.tensor(KEEP[(index, h)]) for h in range(layer.num_heads)])

    return kv.map_layers(fn)


@torch.no_grad()
def test_ragged_heads_attend_to_their_own_rows(tiny_model, make_ids):
    model = tiny_model("llama")
    ctx = make_ids(T, seed=8)
    kv = _ragged(kvstack.compress(model, ctx, "identity"))
    for (li, h), keep in KEEP.items():
        layer = kv.layers[li]
        assert layer.lengths[h] == len(keep)
        off = layer.head_offsets()[h]
        assert layer.row_positions()[off : off + len(keep)].tolist() == keep
    assert not kv.layers[0].uniform and not kv.layers[1].uniform

    hand = HandLlama(model)
    full_past, logits = hand.prefill(ctx)
    past = keep_positions(full_past, lambda li, h, pos: torch.isin(pos, torch.tensor(KEEP[(li, h)])))

    # Capture what each attention layer hands to o_proj: [1, 1, Hq * D] for one new token.
    attn_in: dict[int, torch.Tensor] = {}
    hooks = [
        layer.self_attn.o_proj.register_forward_pre_hook(
            lambda mod, args, i=i: attn_in.__setitem__(i, args[0].detach().clone())
        )
        for i, layer in enumerate(model.model.layers)
    ]
    hf_cache = CompressedCache(kv, torch.float32)
    token = int(logits.argmax())
    try:
        with enable(model):
            for step in range(3):
                pos = T + step
                ref = hand.step(token, pos, past)
                out = model(input_ids=torch.tensor([[token]]), **cache_kwargs(hf_cache), use_cache=True)
                for li in range(2):
                    got = attn_in[li].view(4, 16).double()  # [Hq, D], query heads in order
                    torch.testing.assert_close(got, ref.attn_out[li], atol=1e-4, rtol=0)
                torch.testing.assert_close(out.logits[0, -1].double(), ref.logits, atol=1e-4, rtol=0)
                past = append(past, ref.new_kv, pos)
                token = int(ref.logits.argmax())
    finally:
        for hook in hooks:
            hook.remove()

    # The ragged KVCache stores no padding: rows are exactly sum(lengths) per layer.
    for layer in kv.layers:
        assert layer.keys.shape[0] == sum(layer.lengths)


@torch.no_grad()
def test_ragged_padding_would_change_the_answer(tiny_model, make_ids):
    """Sanity check of the test above: the padded zero rows are not harmless, so a mask that
    ignored validity would be caught."""
    model = tiny_model("llama")
    ctx = make_ids(T, seed=8)
    hand = HandLlama(model)
    full_past, logits = hand.prefill(ctx)
    past = keep_positions(full_past, lambda li, h, pos: torch.isin(pos, torch.tensor(KEEP[(li, h)])))
    longest = {li: max(len(KEEP[(li, h)]) for h in range(2)) for li in range(2)}
    padded = []
    for li, layer_past in enumerate(past):
        heads = []
        for k, v, p in layer_past:
            n = longest[li] - k.shape[0]
            zeros = k.new_zeros(n, k.shape[1])
            heads.append((torch.cat([k, zeros]), torch.cat([v, zeros]), torch.cat([p, p.new_zeros(n)])))
        padded.append(heads)
    token = int(logits.argmax())
    exact = hand.step(token, T, past).logits
    leaky = hand.step(token, T, padded).logits
    assert (exact - leaky).abs().max() > 1e-2


@torch.no_grad()
def test_decode_budget_on_ragged_heads_is_per_head(tiny_model, make_ids):
    """A decode-time budget (sinks + newest window) is held per KV head, over that head's own rows."""
    sink, window = 2, 5
    model = tiny_model("llama")
    ctx = make_ids(T, seed=9)
    kv = _ragged(kvstack.compress(model, ctx, "identity"))
    kv = kv.map_layers(lambda i, layer: replace(layer, meta={**layer.meta, "decode_budget": (sink, window)}))

    def policy(kept: list[int], pos: int) -> list[int]:
        """What head sees at query `pos`: its sinks and its `window` newest rows before `pos`."""
        return sorted({p for p in kept if p < sink} | set(sorted(kept)[-window:]))

    hand = HandLlama(model)
    full_past, logits = hand.prefill(ctx)
    held = {key: list(v) for key, v in KEEP.items()}  # positions each head holds between steps
    hf_cache = CompressedCache(kv, torch.float32)
    token = int(logits.argmax())
    with enable(model):
        for step in range(4):
            pos = T + step
            past = keep_positions(full_past, lambda li, h, p, held=held: torch.isin(p, torch.tensor(held[(li, h)])))
            ref = hand.step(token, pos, past)
            out = model(input_ids=torch.tensor([[token]]), **cache_kwargs(hf_cache), use_cache=True)
            torch.testing.assert_close(out.logits[0, -1].double(), ref.logits, atol=1e-4, rtol=0)
            held = {key: policy(v + [pos], pos) for key, v in held.items()}
            for li, layer in enumerate(hf_cache.layers):
                pos_of = layer.base.row_positions()
                tail = layer.tail_pos.tolist()
                for h, (off, n) in enumerate(zip(layer.base.head_offsets(), layer.base.lengths, strict=True)):
                    assert sorted(pos_of[off : off + n].tolist() + tail) == held[(li, h)], (step, li, h)
            full_past = append(full_past, ref.new_kv, pos)
            token = int(ref.logits.argmax())
