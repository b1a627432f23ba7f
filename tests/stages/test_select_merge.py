"""Token merging against a float64 reference: kept rows from transformers' eager attention (base
``tova``), each evicted value folded by hand into its most similar kept key's row."""

from __future__ import annotations

import pytest
import torch
from select_hand import hand_cache, make_ref, same_generation
from test_select import HKV, T, budget, group, kept, top

import kvstack
from kvstack.errors import BudgetError, RecipeError
from kvstack.stack import Recipe
from kvstack.stages.select.merge import fold_values


@pytest.fixture(scope="module")
def ref():
    return make_ref()


def merged_ref(ref, layer: int, fraction: float, sink: int = 0) -> tuple[list[set[int]], list[torch.Tensor]]:
    """Kept positions per head and their folded values ``[n, D]`` (rows in position order)."""
    p = group(ref.attn[layer][:, T - 1])
    p = p / p.sum(-1, keepdim=True)
    sets, values = [], []
    for h in range(HKV):
        keep = sorted(top(p[h], budget(fraction), range(sink)))
        k, v = ref.keys[layer][h], ref.values[layer][h]
        num = {j: p[h, j] * v[j] for j in keep}
        den = {j: p[h, j] for j in keep}
        for e in range(T):
            if e in keep:
                continue
            sims = [float(torch.dot(k[e], k[j]) / (k[e].norm() * k[j].norm())) for j in keep]
            j = keep[max(range(len(keep)), key=lambda i: (sims[i], -i))]  # ties: the earlier kept row
            num[j] = num[j] + p[h, e] * v[e]
            den[j] = den[j] + p[h, e]
        sets.append(set(keep))
        values.append(torch.stack([num[j] / den[j] for j in keep]))
    return sets, values


@pytest.mark.parametrize("fraction,sink", [(0.25, 0), (0.5, 2)])
def test_merge_folds_evicted_values_like_the_reference(ref, fraction, sink):
    cache = kvstack.compress(ref.model, ref.ids, f"merge:{fraction},base=tova,sink={sink}")
    plain = kvstack.compress(ref.model, ref.ids, f"tova:{fraction},sink={sink}")
    assert kept(cache) == kept(plain)  # merging changes values, never which rows stay
    refs = [merged_ref(ref, layer, fraction, sink) for layer in range(2)]
    for layer, (sets, values) in enumerate(refs):
        assert kept(cache)[layer] == sets
        got = cache.layers[layer].values.decode().double()
        assert torch.allclose(got, torch.cat(values), atol=1e-5), layer
        assert torch.equal(cache.layers[layer].keys.decode(), plain.layers[layer].keys.decode())
        assert not torch.allclose(got, plain.layers[layer].values.decode().double(), atol=1e-3)
    assert cache.nbytes == plain.nbytes
    by_hand = hand_cache(cache, ref.ids, ref.keys, ref.values, [s for s, _ in refs], [v for _, v in refs])
    assert same_generation(ref.model, cache, by_hand, ref.question)


def test_fold_values_by_hand():
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [-1.0, 0.2], [0.1, 0.9]])
    values = torch.tensor([[1.0, 1.0], [2.0, 2.0], [4.0, 0.0], [0.0, 8.0], [6.0, 6.0]])
    weights = torch.tensor([1.0, 3.0, 1.0, 2.0, 1.0])
    kept = torch.tensor([True, True, False, False, False])
    # row 2 -> row 0 (cos .99); row 3 -> row 1 (cos .196 > -.98); row 4 -> row 1
    out = fold_values(keys, values, weights, kept)
    want = torch.tensor([[(1 + 4) / 2, (1 + 0) / 2], [(6 + 0 + 6) / 6, (6 + 16 + 6) / 6]])
    assert torch.allclose(out, want)
    zero = fold_values(keys, values, torch.zeros(5), kept)  # no weight anywhere: values stay
    assert torch.equal(zero, values[:2])


def test_merge_keeps_the_requested_share(ref):
    for fraction in (0.125, 0.3, 0.75):
        cache = kvstack.compress(ref.model, ref.ids, f"merge:{fraction}")
        assert all(n == budget(fraction) for layer in cache.layers for n in layer.lengths)


@pytest.mark.parametrize(
    "recipe,error",
    [("merge:0.5,base=streaming", RecipeError), ("merge:0.5,base=merge", RecipeError), ("merge:0", BudgetError)],
)
def test_bad_parameters(recipe, error):
    with pytest.raises(error, match="merge"):
        Recipe.parse(recipe)


def test_merge_after_quantization_is_refused(ref):
    with pytest.raises(RecipeError, match="before quantization"):
        kvstack.compress(ref.model, ref.ids, "int8 > merge:0.5")
