"""How far a compressed cache moves attention, measured with the model's own queries.

For the question's tokens (their real queries at their real positions), each layer's attention
output over the compressed cache is compared with the output over the full cache: the relative
error per (head, query) and the share of (head, query) pairs whose most-attended context token
changes. It needs no generation, so it is a cheap real-model signal for tests and benchmarks;
retrieval accuracy is still the claim, this explains it.

Llama-family decoders (``q_proj``, ``input_layernorm``, ``model.rotary_emb``: Llama, Mistral,
Qwen2, SmolLM2); others raise :class:`~kvstack.errors.ModelError`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvstack.errors import ModelError
from kvstack.kv import KVCache


@dataclass(frozen=True)
class LayerError:
    relative: float  # mean over heads and queries of |o_q - o_full| / |o_full|
    top1_changed: float  # share of (head, query) pairs whose argmax context token changes


def head_rows(layer) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One layer's decoded keys and values, split per KV head (float32)."""
    k, v = layer.keys.decode().float(), layer.values.decode().float()
    spans = list(zip(layer.head_offsets(), layer.lengths))
    return [k[o : o + n] for o, n in spans], [v[o : o + n] for o, n in spans]


@torch.no_grad()
def attention_errors(model, full: KVCache, cache: KVCache, question_ids: torch.Tensor) -> list[LayerError]:
    """Per layer, the error of ``cache``'s attention outputs against ``full``'s for the question's queries."""
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "rotary_emb") or not hasattr(inner.layers[0].self_attn, "q_proj"):
        raise ModelError(f"attention_errors supports Llama-family decoders, not {type(model).__name__}")
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    device = next(model.parameters()).device
    ids = torch.cat([full.context_ids.long(), question_ids.long()]).view(1, -1).to(device)
    n_ctx = full.context_ids.numel()
    hidden = model(ids, output_hidden_states=True).hidden_states
    pos = torch.arange(n_ctx, ids.shape[1], device=device).view(1, -1)
    cos, sin = inner.rotary_emb(hidden[0][:, n_ctx:], pos)  # the same positions for every layer
    out = []
    for i, (lf, lq) in enumerate(zip(full.layers, cache.layers, strict=True)):
        attn = inner.layers[i].self_attn
        h = inner.layers[i].input_layernorm(hidden[i][:, n_ctx:])
        q = attn.q_proj(h).view(1, h.shape[1], -1, attn.head_dim).transpose(1, 2)
        q = apply_rotary_pos_emb(q, q, cos, sin)[0][0].float()  # [Hq, n, d]
        (kf, vf), (kq, vq) = head_rows(lf), head_rows(lq)
        group = q.shape[0] // len(kf)
        rel, flips = [], []
        for hq in range(q.shape[0]):
            kv = hq // group
            pf = torch.softmax(q[hq] @ kf[kv].T.to(q.device) * attn.scaling, -1)
            pq = torch.softmax(q[hq] @ kq[kv].T.to(q.device) * attn.scaling, -1)
            of, oq = pf @ vf[kv].to(q.device), pq @ vq[kv].to(q.device)
            rel.append(((of - oq).norm(dim=-1) / of.norm(dim=-1).clamp_min(1e-12)).mean().item())
            if pf.shape[-1] == pq.shape[-1]:  # eviction changes which token is which: top-1 only for quantization
                flips.append((pf.argmax(-1) != pq.argmax(-1)).float().mean().item())
        out.append(LayerError(sum(rel) / len(rel), sum(flips) / len(flips) if flips else float("nan")))
    return out
