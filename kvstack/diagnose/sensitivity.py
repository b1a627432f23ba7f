"""Per-layer sensitivity: the damage of quantizing one layer alone, for each candidate width."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kvstack.hf.model import model_info
from kvstack.hf.prefill import prefill
from kvstack.hf.score import continuation_logprobs, kl_to, nll
from kvstack.stack import Recipe, StageContext

DEFAULT_OPTIONS = ("int2", "int3", "int4", "int8", "fp16")


def option_stage(option: str, group: int) -> str:
    """Recipe text of one option (``int4`` -> ``int4:g64``; float casts take no group)."""
    return option if option.startswith(("fp", "bf")) else f"{option}:g{group}"


@dataclass
class Sensitivity:
    """``kl[layer][option]`` and ``bytes[layer][option]`` measured on one context."""

    options: tuple[str, ...]
    group: int
    kl: list[dict[str, float]]
    bytes: list[dict[str, int]]
    dense_bytes: list[int]
    elements: list[int]  # K and V elements each layer holds
    full_nll: float
    stats: dict = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return len(self.kl)


class Probe:
    """One prefill of a context and the full cache's predictions of a continuation, against
    which any recipe is scored (KL to the full cache, NLL, bytes) without a new prefill."""

    def __init__(self, model, context_ids: torch.Tensor, continuation_ids: torch.Tensor, progress: bool = False):
        self.model = model
        self.info = model_info(model)
        self.pre = prefill(model, self.info, context_ids, progress=progress)
        self.cont = torch.as_tensor(continuation_ids).view(-1)
        self.full = self._logprobs(self.pre.cache)

    def _logprobs(self, cache) -> torch.Tensor:
        return continuation_logprobs(self.model, cache, self.cont, first_logits=self.pre.last_logits)

    def compress(self, recipe: str):
        info = self.info
        ctx = StageContext(info.num_query_heads, info.num_kv_heads, info.head_dim, info.num_layers)
        return Recipe.parse(recipe).apply(self.pre.cache, ctx)

    def score(self, recipe: str) -> dict:
        """``{"kl", "nll", "nbytes", "bits"}`` of a recipe on this context (bits per K/V element)."""
        cache = self.compress(recipe)
        lp = self._logprobs(cache)
        elements = sum(2 * sum(layer.lengths) * layer.keys.shape[1] for layer in self.pre.cache.layers)
        return {
            "kl": max(kl_to(self.full, lp), 0.0),
            "nll": nll(lp, self.cont),
            "nbytes": cache.nbytes,
            "bits": 8 * cache.nbytes / elements,
        }


@torch.no_grad()
def measure(probe: Probe, options: tuple[str, ...] = DEFAULT_OPTIONS, group: int = 64, progress: bool = False):
    """For every (layer, option): quantize that layer only, score against the full cache."""
    layers = probe.info.num_layers
    kl: list[dict[str, float]] = []
    nbytes: list[dict[str, int]] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=layers * len(options), desc="diagnose", unit="run", leave=False)
    for layer in range(layers):
        kl.append({})
        nbytes.append({})
        for opt in options:
            cache = probe.compress(f"{option_stage(opt, group)}@layer{layer}")
            kl[layer][opt] = max(kl_to(probe.full, probe._logprobs(cache)), 0.0)
            nbytes[layer][opt] = cache.layers[layer].nbytes
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    dense_layers = probe.pre.cache.layers
    return Sensitivity(
        options=tuple(options),
        group=group,
        kl=kl,
        bytes=nbytes,
        dense_bytes=[layer.nbytes for layer in dense_layers],
        elements=[2 * sum(layer.lengths) * layer.keys.shape[1] for layer in dense_layers],
        full_nll=nll(probe.full, probe.cont),
        stats={"context_tokens": probe.pre.cache.context_length, "continuation": int(probe.cont.numel())},
    )
