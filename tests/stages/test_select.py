"""Selection stages against brute-force references built from the model's FULL attention.

The references below use only transformers' own eager attention probabilities
(``output_attentions=True``), the dense ``DynamicCache`` keys and queries projected by
hand - none of kvstack's scoring code - and pick top-k with plain Python sorting
(ties to the earlier position, the documented rule).
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

import kvstack
from kvstack.errors import BudgetError, InputError, RecipeError
from kvstack.kv import DenseRows, KVCache, KVLayer

T = 48  # context tokens
HQ, HKV, D = 4, 2, 16
G = HQ // HKV


def context(seed: int) -> torch.Tensor:
    """``T`` distinct token ids: a repeated token has the same key norm at layer 0 (RoPE keeps
    norms), an exact tie that float rounding would break at random."""
    return torch.randperm(128, generator=torch.Generator().manual_seed(seed))[:T]


def tiny_llama(layers: int = 2, kv_heads: int = HKV, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=HQ,
        num_key_value_heads=kv_heads,
        attn_implementation="eager",
    )
    return LlamaForCausalLM(cfg).eval()


class Ref:
    """Everything a reference needs, from plain transformers runs of the tiny model."""

    def __init__(self, model, ids: torch.Tensor, question: torch.Tensor) -> None:
        self.model, self.ids, self.question = model, ids, question
        hidden: dict[int, tuple] = {}

        def grab(i):
            def hook(module, args, kwargs):
                hidden[i] = (kwargs["hidden_states"], kwargs["position_embeddings"])

            return hook

        handles = [
            layer.self_attn.register_forward_pre_hook(grab(i), with_kwargs=True)
            for i, layer in enumerate(model.model.layers)
        ]
        try:
            with torch.no_grad():
                out = model(ids[None], output_attentions=True, use_cache=True)
        finally:
            for h in handles:
                h.remove()
        with torch.no_grad():
            both = model(torch.cat([ids, question])[None], output_attentions=True)
        self.attn = [a[0].double() for a in out.attentions]  # [Hq, T, T] probabilities
        self.q_attn = [a[0, :, T:, :T].double() for a in both.attentions]  # question rows, context keys
        self.keys = [out.past_key_values.layers[i].keys[0].double() for i in range(len(self.attn))]
        self.values = [out.past_key_values.layers[i].values[0].double() for i in range(len(self.attn))]
        self.queries = []
        for i, layer in enumerate(model.model.layers):
            h, (cos, sin) = hidden[i]
            with torch.no_grad():
                q = layer.self_attn.q_proj(h).view(1, T, HQ, D).transpose(1, 2)
                q, _ = apply_rotary_pos_emb(q, q, cos, sin)
            self.queries.append(q[0].double())  # [Hq, T, D] post-RoPE


@pytest.fixture(scope="module")
def ref() -> Ref:
    model = tiny_llama()
    gen = torch.Generator().manual_seed(1)
    ids = context(1)
    question = torch.randint(0, 128, (6,), generator=gen)
    return Ref(model, ids, question)


# --- plain-Python reference selection ------------------------------------------------------
def budget(fraction: float, n: int = T) -> int:
    return max(1, math.floor(fraction * n + 0.5))


def top(scores, budget: int, forced=(), candidates=None) -> set[int]:
    """Forced positions plus the best others by score (ties: earlier position)."""
    forced = set(forced)
    pool = [p for p in (candidates if candidates is not None else range(len(scores))) if p not in forced]
    pool.sort(key=lambda p: (-float(scores[p]), p))
    return forced | set(pool[: budget - len(forced)])


def group(x: torch.Tensor, agg: str = "sum") -> torch.Tensor:
    x = x.reshape(HKV, G, *x.shape[1:])
    return x.amax(1) if agg == "max" else x.sum(1)


def kept(cache: KVCache) -> list[list[set[int]]]:
    out = []
    for layer in cache.layers:
        pos = layer.row_positions().tolist()
        heads, off = [], 0
        for n in layer.lengths:
            heads.append(set(pos[off : off + n]))
            off += n
        out.append(heads)
    return out


def compress(ref: Ref, recipe: str, **kw) -> KVCache:
    return kvstack.compress(ref.model, ref.ids, recipe, **kw)


# --- exactness per method ------------------------------------------------------------------
@pytest.mark.parametrize("agg", ["sum", "max"])
def test_q2c_matches_full_attention(ref, agg):
    cache = compress(ref, f"q2c:0.25,agg={agg}", question_ids=ref.question)
    for layer, heads in enumerate(kept(cache)):
        a = ref.q_attn[layer]
        a = a / a.sum(-1, keepdim=True)  # softmax over the context only, per question query
        scores = group(a.sum(1), agg)
        for h in range(HKV):
            assert heads[h] == top(scores[h], budget(0.25)), (layer, h)


def test_q2c_hand_queries_agree_with_attention(ref):
    # the question queries projected by hand give the same scores as transformers' attention rows
    cache = compress(ref, "q2c:0.3,sink=2", question_ids=ref.question)
    model = ref.model
    hidden = {}

    def grab(module, args, kwargs):
        hidden[0] = (kwargs["hidden_states"], kwargs["position_embeddings"])

    handle = model.model.layers[0].self_attn.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model(torch.cat([ref.ids, ref.question])[None])
    finally:
        handle.remove()
    h, (cos, sin) = hidden[0]
    with torch.no_grad():
        q = model.model.layers[0].self_attn.q_proj(h).view(1, -1, HQ, D).transpose(1, 2)
        q, _ = apply_rotary_pos_emb(q, q, cos, sin)
    q = q[0, :, T:].double()
    k = ref.keys[0].repeat_interleave(G, 0)
    probs = torch.softmax(q @ k.transpose(1, 2) * D**-0.5, dim=-1)  # question sees the whole context
    scores = group(probs.sum(1))
    for hd in range(HKV):
        assert kept(cache)[0][hd] == top(scores[hd], budget(0.3), forced={0, 1})


def snap_ref(ref: Ref, layer: int, fraction: float, window: int, kernel: int, pool: str, sink: int = 0):
    obs = ref.attn[layer][:, T - window :, : T - window].sum(1)  # [Hq, T-window]
    pad = kernel // 2
    n = obs.shape[1]
    pooled = torch.zeros_like(obs)
    for j in range(n):
        part = obs[:, max(j - pad, 0) : min(j + pad + 1, n)]
        pooled[:, j] = part.amax(1) if pool == "max" else part.sum(1) / kernel
    scores = group(pooled)
    forced = set(range(T - window, T)) | set(range(sink))
    return [top(scores[h], budget(fraction), forced, range(n)) for h in range(HKV)]


@pytest.mark.parametrize(
    "fraction,window,kernel,pool,sink",
    [(0.25, 4, 7, "max", 0), (0.3, 8, 5, "avg", 0), (0.25, 4, 1, "max", 3)],
)
def test_snapkv_matches_full_attention(ref, fraction, window, kernel, pool, sink):
    cache = compress(ref, f"snapkv:{fraction},window={window},kernel={kernel},pool={pool},sink={sink}")
    for layer, heads in enumerate(kept(cache)):
        assert heads == snap_ref(ref, layer, fraction, window, kernel, pool, sink), layer
        assert all(set(range(T - window, T)) <= s for s in heads)


@pytest.mark.parametrize("recent,sink", [("0.5", 0), ("4", 2), ("0", 0)])
def test_h2o_matches_full_attention(ref, recent, sink):
    cache = compress(ref, f"h2o:0.3,recent={recent},sink={sink}")
    b = budget(0.3)
    r = int(float(recent)) if float(recent) >= 1 else math.floor(float(recent) * b + 0.5)
    for layer, heads in enumerate(kept(cache)):
        scores = group(ref.attn[layer].sum(1))  # attention each key received from every query
        forced = set(range(T - r, T)) | set(range(sink))
        assert heads == [top(scores[h], b, forced) for h in range(HKV)], layer


def test_tova_matches_full_attention(ref):
    cache = compress(ref, "tova:0.2")
    for layer, heads in enumerate(kept(cache)):
        scores = group(ref.attn[layer][:, T - 1])
        assert heads == [top(scores[h], budget(0.2)) for h in range(HKV)], layer


def test_hand_queries_reproduce_attention(ref):
    # sanity of the reference itself: queries by hand x cache keys = transformers' attention
    for layer in range(2):
        k = ref.keys[layer].repeat_interleave(G, 0)
        logits = ref.queries[layer] @ k.transpose(1, 2) * D**-0.5
        logits = logits.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        assert torch.allclose(torch.softmax(logits, -1), ref.attn[layer], atol=1e-5)


@pytest.mark.parametrize("cov", [True, False])
def test_expected_attention_matches_hand_computation(ref, cov):
    w = 8
    cache = compress(ref, f"expected:0.25,window={w},cov={cov}")
    for layer, heads in enumerate(kept(cache)):
        q = ref.queries[layer][:, T - w :]  # [Hq, w, D]
        mu = q.mean(1)
        k = ref.keys[layer].repeat_interleave(G, 0)  # [Hq, T, D]
        logit = (k @ mu.unsqueeze(-1)).squeeze(-1) / math.sqrt(D)
        if cov:
            c = q - mu[:, None]
            sigma = c.transpose(1, 2) @ c / w
            logit = logit + ((k @ sigma) * k).sum(-1) / (2 * D)
        scores = group(logit.exp())
        assert heads == [top(scores[h], budget(0.25)) for h in range(HKV)], layer


def test_knorm_and_sinks(ref):
    cache = compress(ref, "knorm:0.25,sink=3")
    for layer, heads in enumerate(kept(cache)):
        norms = ref.keys[layer].norm(dim=-1)
        assert heads == [top(-norms[h], budget(0.25), forced={0, 1, 2}) for h in range(HKV)]
        assert all({0, 1, 2} <= s for s in heads)


@pytest.mark.parametrize("span", [1, 3, 8])
def test_span_keeps_the_tokens_after_each_well_scored_token(ref, span):
    cache = compress(ref, f"knorm:0.25,span={span}")
    for layer, heads in enumerate(kept(cache)):
        score = (-ref.keys[layer].norm(dim=-1)).tolist()
        spread = [[max(row[max(0, j - span) : j + 1]) for j in range(T)] for row in score]
        assert heads == [top(spread[h], budget(0.25)) for h in range(HKV)]
        # the best-scored token of each head comes with its successors
        for h in range(HKV):
            best = max(range(T), key=lambda j: (score[h][j], -j))
            assert set(range(best, min(T, best + span + 1))) <= heads[h]


def test_spread_forward_equals_a_window_max_and_bad_spans_are_recipe_errors(ref):
    from kvstack.stages.select.base import spread_forward

    x = torch.randn(3, 20, dtype=torch.float64).float()
    x[1, 15:] = float("-inf")  # padding rows of a shorter head stay -inf
    for span in (0, 1, 4, 25):
        want = torch.tensor([[max(r[max(0, j - span) : j + 1]) for j in range(20)] for r in x.tolist()])
        assert torch.equal(spread_forward(x, span), want)
    with pytest.raises(RecipeError, match="span=-1 must be >= 0"):
        compress(ref, "snapkv:0.5,span=-1")


def test_keydiff_matches_hand_computation(ref):
    cache = compress(ref, "keydiff:0.4")
    for layer, heads in enumerate(kept(cache)):
        k = ref.keys[layer]
        unit = k / k.norm(dim=-1, keepdim=True)
        anchor = unit.mean(1, keepdim=True)
        cos = (unit * anchor).sum(-1) / anchor.norm(dim=-1)
        assert heads == [top(-cos[h], budget(0.4)) for h in range(HKV)]


def test_random_is_seeded(ref):
    a, b, c = (compress(ref, f"random:0.25,seed={s}") for s in (7, 7, 8))
    assert kept(a) == kept(b)
    assert kept(a) != kept(c)
    assert all(len(s) == budget(0.25) for heads in kept(c) for s in heads)


# --- budgets, allocation, memory -----------------------------------------------------------
@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.33, 0.5, 0.77, 1.0])
def test_kept_counts_follow_fraction(ref, fraction):
    cache = compress(ref, f"knorm:{fraction}")
    for layer in cache.layers:
        assert all(abs(n - fraction * T) <= 1 for n in layer.lengths)
        assert all(n == budget(fraction) for n in layer.lengths)


def test_nbytes_is_exactly_the_kept_rows(ref):
    cache = compress(ref, "tova:0.25,alloc=adakv")
    elem = torch.empty((), dtype=cache.dense_dtype).element_size()
    expected = 0
    for heads in kept(cache):
        rows = sum(len(s) for s in heads)
        same = len({frozenset(s) for s in heads}) == 1
        expected += 2 * rows * D * elem + 4 * (len(heads[0]) if same else rows)  # int32 positions
    assert cache.nbytes == expected
    assert cache.nbytes < cache.dense_nbytes / 3


def adakv_ref(scores: torch.Tensor, per_head: int) -> list[set[int]]:
    """Ada-KV by hand: heads' scores normalized to sum 1, floor(0.2*B/H) per head, then one top-k."""
    norm = scores / scores.sum(-1, keepdim=True)
    total = per_head * HKV
    floor = max(int(0.2 * total / HKV), 1)
    chosen = [set(sorted(range(T), key=lambda p: (-float(norm[h, p]), p))[:floor]) for h in range(HKV)]
    rest = [(-float(norm[h, p]), h * T + p, h, p) for h in range(HKV) for p in range(T) if p not in chosen[h]]
    for _, _, h, p in sorted(rest)[: total - floor * HKV]:
        chosen[h].add(p)
    return chosen


def test_adakv_matches_reference_with_ragged_heads(ref):
    cache = compress(ref, "tova:0.25,alloc=adakv")
    ragged = False
    for layer, heads in enumerate(kept(cache)):
        assert heads == adakv_ref(group(ref.attn[layer][:, T - 1]), budget(0.25)), layer
        assert sum(cache.layers[layer].lengths) == HKV * budget(0.25)  # exact total
        assert min(cache.layers[layer].lengths) >= 1
        ragged |= len(set(cache.layers[layer].lengths)) > 1
    assert ragged, "adakv should give heads different budgets here"


@pytest.mark.parametrize(
    "recipe", ["q2c:0.3,alloc=adakv", "snapkv:0.3,window=4,alloc=adakv", "expected:0.3,alloc=adakv"]
)
def test_adakv_total_is_exact(ref, recipe):
    cache = compress(ref, recipe, question_ids=ref.question)
    assert [sum(layer.lengths) for layer in cache.layers] == [HKV * budget(0.3)] * 2
    assert any(len(set(layer.lengths)) > 1 for layer in cache.layers)


def test_pyramid_budgets_shrink_with_depth_same_total():
    model = tiny_llama(layers=4)
    ids = context(3)
    cache = kvstack.compress(model, ids, "knorm:0.5,alloc=pyramid")
    # by hand: free total 4 layers x 2 heads x 24 = 192, weights 1.95, 1.3167, 0.6833, 0.05 (beta=20)
    # -> 93.6, 63.2, 32.8, 2.4 -> largest remainder 94, 63, 33, 2 -> split over 2 heads
    assert [layer.lengths for layer in cache.layers] == [(47, 47), (32, 31), (17, 16), (1, 1)]
    assert cache.tokens_kept == 4 * HKV * budget(0.5)
    flat = kvstack.compress(model, ids, "knorm:0.5,alloc=pyramid,beta=1")
    assert [layer.lengths for layer in flat.layers] == [(24, 24)] * 4
    # the rows kept are still each head's best under its own budget
    with torch.no_grad():
        out = model(ids[None], use_cache=True)
    for layer, heads in enumerate(kept(cache)):
        norms = out.past_key_values.layers[layer].keys[0].double().norm(dim=-1)
        assert heads == [top(-norms[h], len(heads[h])) for h in range(HKV)]


def test_pyramid_moves_what_a_layer_cannot_hold():
    # at 0.9 the shallow layers would need more rows than they have: they keep all, others take the rest
    model = tiny_llama(layers=4)
    cache = kvstack.compress(model, context(3), "keydiff:0.9,alloc=pyramid")
    lengths = [layer.lengths for layer in cache.layers]
    assert lengths[0] == (T, T) and lengths[1] == (T, T)
    assert all(a[0] >= b[0] for a, b in zip(lengths, lengths[1:], strict=False))
    assert lengths[-1][0] < budget(0.9)
    assert cache.tokens_kept == 4 * HKV * budget(0.9)


def test_pyramid_keeps_forced_rows_in_every_layer():
    model = tiny_llama(layers=4)
    ids = context(3)
    cache = kvstack.compress(model, ids, "snapkv:0.5,window=4,sink=2,alloc=pyramid")
    lengths = [layer.lengths[0] for layer in cache.layers]
    assert lengths == sorted(lengths, reverse=True) and lengths[0] > lengths[-1]
    assert cache.tokens_kept == 4 * HKV * budget(0.5)
    for heads in kept(cache):
        assert all({0, 1, 44, 45, 46, 47} <= s for s in heads)


def test_selection_applies_to_what_is_there(ref):
    # after streaming, the layer holds 26 rows: the budget is a share of those
    cache = compress(ref, "streaming:window=24,sink=2 > knorm:0.5")
    there = {0, 1, *range(T - 24, T)}
    for layer, heads in enumerate(kept(cache)):
        norms = ref.keys[layer].norm(dim=-1)
        assert heads == [top(-norms[h], 13, candidates=sorted(there)) for h in range(HKV)]


def test_layer_scope(ref):
    cache = compress(ref, "knorm:0.25@layer1")
    assert cache.layers[0].lengths == (T, T) and cache.layers[1].lengths == (12, 12)


def test_sliding_window_layers_use_what_they_hold():
    torch.manual_seed(0)
    cfg = MistralConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=HQ,
        num_key_value_heads=HKV,
        sliding_window=16,
        attn_implementation="eager",
    )
    model = MistralForCausalLM(cfg).eval()
    ids = context(5)
    with torch.no_grad():
        attn = [a[0].double() for a in model(ids[None], output_attentions=True).attentions]
    cache = kvstack.compress(model, ids, "h2o:0.5,recent=2")
    held = range(T - 15, T)  # a sliding layer keeps the last W-1 tokens
    for layer, heads in enumerate(kept(cache)):
        scores = group(attn[layer].sum(1))
        assert heads == [top(scores[h], budget(0.5, 15), {46, 47}, held) for h in range(HKV)]


# --- generation ----------------------------------------------------------------------------
@pytest.mark.parametrize("recipe", ["snapkv:0.25,window=4", "tova:0.25,alloc=adakv"])
def test_generation_equals_hand_built_cache(ref, recipe):
    # the cache built by hand holds the reference's rows, taken from transformers' dense cache
    if recipe.startswith("snapkv"):
        sets = [snap_ref(ref, layer, 0.25, 4, 7, "max") for layer in range(2)]
    else:
        sets = [adakv_ref(group(ref.attn[layer][:, T - 1]), budget(0.25)) for layer in range(2)]
    layers = []
    for layer, heads in enumerate(sets):
        pos = [sorted(s) for s in heads]
        k = torch.cat([ref.keys[layer][h, p] for h, p in enumerate(pos)]).float()
        v = torch.cat([ref.values[layer][h, p] for h, p in enumerate(pos)]).float()
        flat = torch.tensor([p for ps in pos for p in ps], dtype=torch.int32)
        layers.append(KVLayer(DenseRows(k), DenseRows(v), tuple(len(p) for p in pos), flat))
    cache = compress(ref, recipe)
    by_hand = KVCache(
        layers=layers,
        context_ids=ref.ids.to(torch.int32),
        dense_dtype=torch.float32,
        model_fingerprint=cache.model_fingerprint,
        dense_layout=cache.dense_layout,
    )
    assert cache.nbytes == by_hand.nbytes
    out = kvstack.generate(ref.model, cache, ref.question, max_new_tokens=8)
    assert out.numel() == 8
    assert torch.equal(out, kvstack.generate(ref.model, by_hand, ref.question, max_new_tokens=8))


def test_generation_equals_masked_full_attention():
    # one KV head: eviction is then a plain attention mask on the full sequence (pure transformers)
    model = tiny_llama(kv_heads=1, seed=2)
    gen = torch.Generator().manual_seed(4)
    ids, question = context(4), torch.randint(0, 128, (4,), generator=gen)
    cache = kvstack.compress(model, ids, "h2o:0.3,recent=4,sink=1")
    keep = kept(cache)[0][0]
    assert all(heads == [keep] for heads in kept(cache)) and len(keep) == budget(0.3)
    seq = torch.cat([ids, question])
    for _ in range(6):
        n = seq.numel()
        allow = torch.ones(n, n, dtype=torch.bool).tril()
        evicted = torch.tensor([p for p in range(T) if p not in keep])
        allow[T:, evicted] = False  # tokens after the context see only the kept context rows
        mask = torch.zeros(n, n).masked_fill(~allow, torch.finfo(torch.float32).min)
        with torch.no_grad():
            logits = model(seq[None], attention_mask=mask[None, None]).logits[0, -1]
        seq = torch.cat([seq, logits.argmax().view(1)])
    out = kvstack.generate(model, cache, question, max_new_tokens=6)
    assert out.tolist() == seq[T + question.numel() :].tolist()


# --- errors --------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["snapkv:0", "h2o:1.5", "knorm:-0.2", "q2c:nan", "tova:fraction=0"])
def test_fraction_out_of_range(text):
    with pytest.raises(BudgetError, match=r"must be in \(0, 1\]"):
        kvstack.parse_recipe(text)


@pytest.mark.parametrize(
    "text,match",
    [
        ("knorm:0.5,alloc=even", "alloc='even' is not one of uniform, pyramid, adakv"),
        ("q2c:0.5,agg=mean", "agg='mean' is not one of sum, max"),
        ("snapkv:0.5,kernel=6", "kernel=6 must be an odd width"),
        ("snapkv:0.5,pool=median", "pool='median'"),
        ("h2o:0.5,recent=2.5", "recent=2.5 must be a share"),
        ("knorm:0.5,alloc=pyramid,beta=0.5", "beta=0.5 must be >= 1"),
        ("random:0.5,seed=x", "parameter 'seed' got 'x'"),
        ("tova:0.5,window=4", "has no parameter 'window'"),
    ],
)
def test_bad_parameters(text, match):
    with pytest.raises(RecipeError, match=match):
        kvstack.parse_recipe(text)


def test_negative_sink():
    with pytest.raises(BudgetError, match="sink=-1 must be >= 0"):
        kvstack.parse_recipe("knorm:0.5,sink=-1")


def test_q2c_without_question_is_an_input_error(ref):
    with pytest.raises(InputError, match="needs question_ids"):
        kvstack.compress(ref.model, ref.ids, "q2c:0.25")


@pytest.mark.parametrize(
    "text,match",
    [
        ("knorm:0.1,sink=8", r"keeps 5 of its 48 tokens, but sink=8 must always be kept .*at least 0.17"),
        ("snapkv:0.25", r"window=32 observed tokens must always be kept .*at least 0.67"),
        ("h2o:0.1,recent=6", r"sink=0 plus recent=6 tokens"),
    ],
)
def test_forced_tokens_beyond_budget(ref, text, match):
    with pytest.raises(BudgetError, match=match):
        compress(ref, text)


def test_recipes_round_trip():
    for name in ("q2c", "snapkv", "h2o", "knorm", "tova", "random", "keydiff", "expected"):
        stage = kvstack.parse_recipe(f"{name}:0.25,sink=2,alloc=adakv").stages[0]
        assert stage.family == "select" and stage.fraction == 0.25
        again = kvstack.parse_recipe(stage.spec()).stages[0]
        assert again.spec() == stage.spec()


# --- other architectures (tests/conftest.py's tiny models) ---------------------------------
ARCH_RECIPES = {
    "llama": "expected:0.5,window=4,alloc=pyramid",
    "mistral": "keydiff:0.4,sink=1",
    "mistral_swa": "snapkv:0.5,window=2,alloc=adakv",
    "qwen2": "tova:0.3",
    "qwen3": "q2c:0.5,alloc=adakv",
    "gemma2": "h2o:0.5,recent=1,sink=1",
    "gemma3": "q2c:0.4,agg=max",
    "phi3": "snapkv:0.3,window=4,pool=avg",
}


@pytest.mark.parametrize("arch", sorted(ARCH_RECIPES))
def test_architectures_compress_and_generate(tiny_model, make_ids, arch):
    model = tiny_model(arch)
    ids, question = make_ids(40, seed=1), make_ids(3, seed=2)
    recipe = ARCH_RECIPES[arch]
    full = kvstack.compress(model, ids, "identity")
    cache = kvstack.compress(model, ids, recipe, question_ids=question)
    fraction = float(recipe.split(":")[1].split(",")[0])
    for before, after in zip(full.layers, cache.layers, strict=True):
        held = before.lengths[0]  # sliding layers hold only their window
        if "adakv" in recipe:
            assert sum(after.lengths) == sum(budget(fraction, n) for n in before.lengths)
        elif "pyramid" not in recipe:
            assert after.lengths == (budget(fraction, held),) * len(before.lengths)
        assert set(after.row_positions().tolist()) <= set(before.row_positions().tolist())
    uniform_total = sum(budget(fraction, n) for layer in full.layers for n in layer.lengths)
    assert cache.tokens_kept == uniform_total
    assert cache.nbytes < full.nbytes
    assert kvstack.generate(model, cache, question, max_new_tokens=3).numel() == 3
