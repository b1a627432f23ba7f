"""A Llama forward pass written out by hand, in float64, from a model's weights.

It does not call any transformers module: embedding lookup, RMSNorm, q/k/v projections,
RoPE at the *true* position, grouped-query attention over exactly the key/value rows it is
given (per KV head, so rows may differ between heads), o_proj, SwiGLU MLP, final norm and
lm_head. Tests use it as the ground truth for what attention over a compressed cache must
compute.

The past is ``past[layer][kv_head] = (keys [n, D], values [n, D], positions [n])``, keys
post-RoPE as Hugging Face caches them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

F64 = torch.float64


@dataclass
class Step:
    logits: torch.Tensor  # [V] float64
    new_kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys [Hkv, D], values [Hkv, D] (post-RoPE)
    attn_out: list[torch.Tensor]  # per layer: attention output per query head [Hq, D], before o_proj
    queries: list[torch.Tensor]  # per layer: post-RoPE queries [Hq, D]


class HandLlama:
    def __init__(self, model) -> None:
        cfg = model.config
        if cfg.model_type != "llama":
            raise ValueError("HandLlama reproduces LlamaForCausalLM only")
        self.hq = cfg.num_attention_heads
        self.hkv = cfg.num_key_value_heads
        self.d = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.hq
        self.eps = cfg.rms_norm_eps
        theta = cfg.rope_parameters["rope_theta"]
        assert cfg.rope_parameters.get("rope_type", "default") == "default"
        self.inv_freq = 1.0 / (theta ** (torch.arange(0, self.d, 2, dtype=F64) / self.d))

        def w(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to(F64).clone()

        self.embed = w(model.model.embed_tokens.weight)
        self.layers = []
        for layer in model.model.layers:
            att, mlp = layer.self_attn, layer.mlp
            self.layers.append(
                dict(
                    ln1=w(layer.input_layernorm.weight),
                    ln2=w(layer.post_attention_layernorm.weight),
                    wq=w(att.q_proj.weight),
                    wk=w(att.k_proj.weight),
                    wv=w(att.v_proj.weight),
                    wo=w(att.o_proj.weight),
                    gate=w(mlp.gate_proj.weight),
                    up=w(mlp.up_proj.weight),
                    down=w(mlp.down_proj.weight),
                )
            )
        self.norm = w(model.model.norm.weight)
        self.lm_head = w(model.lm_head.weight)

    # --- pieces ----------------------------------------------------------------------
    def rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + self.eps) * weight

    def rope(self, x: torch.Tensor, position: int) -> torch.Tensor:
        """Rotate ``x [..., D]`` to ``position`` (HF's rotate_half convention)."""
        ang = position * self.inv_freq
        cos = torch.cat([ang.cos(), ang.cos()])
        sin = torch.cat([ang.sin(), ang.sin()])
        half = self.d // 2
        rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rot * sin

    # --- one token ---------------------------------------------------------------------
    def step(self, token: int, position: int, past) -> Step:
        """Process one token at ``position``: attend to ``past`` rows (any positions) plus itself."""
        h = self.embed[int(token)]
        new_kv, attn_out, queries = [], [], []
        group = self.hq // self.hkv
        for li, p in enumerate(self.layers):
            x = self.rms(h, p["ln1"])
            q = self.rope((x @ p["wq"].T).view(self.hq, self.d), position)
            k = self.rope((x @ p["wk"].T).view(self.hkv, self.d), position)
            v = (x @ p["wv"].T).view(self.hkv, self.d)
            outs = []
            for head in range(self.hq):
                kv_head = head // group
                pk, pv, ppos = past[li][kv_head]
                keys = torch.cat([pk.to(F64), k[kv_head : kv_head + 1]])
                values = torch.cat([pv.to(F64), v[kv_head : kv_head + 1]])
                assert bool((ppos < position).all()), "past rows must precede the query"
                scores = keys @ q[head] / self.d**0.5
                probs = torch.softmax(scores, dim=0)
                outs.append(probs @ values)
            o = torch.stack(outs)  # [Hq, D]
            attn_out.append(o)
            queries.append(q)
            new_kv.append((k, v))
            h = h + o.reshape(-1) @ p["wo"].T
            y = self.rms(h, p["ln2"])
            a = y @ p["gate"].T
            h = h + (a * torch.sigmoid(a) * (y @ p["up"].T)) @ p["down"].T
        logits = self.rms(h, self.norm) @ self.lm_head.T
        return Step(logits=logits, new_kv=new_kv, attn_out=attn_out, queries=queries)

    # --- helpers ---------------------------------------------------------------------------
    def empty_past(self):
        def nothing():
            rows = torch.zeros(0, self.d, dtype=F64)
            return (rows, rows.clone(), torch.zeros(0, dtype=torch.long))

        return [[nothing() for _ in range(self.hkv)] for _ in self.layers]

    def prefill(self, ids: torch.Tensor):
        """Run the context token by token with full causal attention.

        Returns ``(past, last_logits)``: ``past`` holds every context token in every head.
        """
        past = self.empty_past()
        logits = None
        for pos, tok in enumerate(ids.tolist()):
            out = self.step(tok, pos, past)
            past = append(past, out.new_kv, pos)
            logits = out.logits
        return past, logits


def append(past, new_kv, position: int):
    """``past`` with the token at ``position`` appended to every head of every layer."""
    out = []
    for layer_past, (k, v) in zip(past, new_kv, strict=True):
        heads = []
        for h, (pk, pv, ppos) in enumerate(layer_past):
            heads.append(
                (
                    torch.cat([pk, k[h : h + 1]]),
                    torch.cat([pv, v[h : h + 1]]),
                    torch.cat([ppos, torch.tensor([position])]),
                )
            )
        out.append(heads)
    return out


def keep_positions(past, keep_fn):
    """``past`` reduced, per layer and head, to the rows where ``keep_fn(layer, head, positions)`` is True."""
    out = []
    for li, layer_past in enumerate(past):
        heads = []
        for h, (pk, pv, ppos) in enumerate(layer_past):
            m = keep_fn(li, h, ppos)
            heads.append((pk[m], pv[m], ppos[m]))
        out.append(heads)
    return out
