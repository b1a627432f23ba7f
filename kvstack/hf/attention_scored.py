"""H2O's cumulative attention during prefill, without a second attention pass and never T x T.

H2O ranks keys by the attention they received from *every* prompt query. The model's SDPA
never returns its weights, and a separate scoring pass next to it doubled the prefill on the
CPU (benchmarks/RESULTS.md). Here:

* ``stride=1`` (exact): :func:`attend_and_score` computes the layer's attention output itself,
  in blocks of queries, and adds each block's softmax column sums from the same probabilities.
* ``stride=k`` (estimate): the model's attention runs as the CPU flash kernel that also returns
  each query's log-sum-exp (``lse``; the same kernel SDPA calls, so the output is bit-identical;
  eager models and GPUs keep their own call and pay an extra pass for ``lse``).
  With ``lse`` a probability is ``exp(q.k - lse)`` for any (query, key) pair, so
  - the *band*: attention from queries at most ``BAND - 1`` positions after the key, from every
    query, is summed exactly (:func:`band_sums`, one batched product per call). Local attention
    is where sampling queries fails: a key's sum would hinge on whether its neighbour was picked.
  - the rest comes from every ``k``-th query (weight ``k``) and the last ``TAIL`` (weight 1), kept
    while the model runs and scored at the end of the prefill in a few large blocks.

Queries ``[Hq, n, D]`` at positions ``q_start..q_start+n-1`` meet keys at positions ``0..S-1``
(the prefill's dense cache); keys are shared by their query group (GQA, no per-head copy).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_BLOCK = 1 << 22  # logits per block (16 MiB of fp32): near SDPA's speed here, and few tensor ops
TAIL = 64  # the last context queries always scored, weight 1 (all of a short prompt: exact there)
BAND = 64  # attention from the BAND queries at and right after a key is summed exactly


def _block_probs(
    q: torch.Tensor,
    k: torch.Tensor,
    qpos: torch.Tensor,
    softcap: float | None,
    window: int | None,
    lse: torch.Tensor | None = None,
    min_dist: int = 0,
) -> tuple[torch.Tensor, int, int, torch.Tensor]:
    """Probabilities ``[Hk, g*m, hi-lo]`` of queries ``q [Hk, g*m, D]`` (positions ``qpos [m]``,
    sorted; ``g`` group members each) for the keys they may see, which lie in ``lo..hi-1``: a
    softmax (and its log-sum-exps ``[Hk, g*m]``), or ``exp(logit - lse)`` given ``lse``, keeping
    keys ``min_dist`` or more positions before the query only (the band left out)."""
    first, last = int(qpos[0]), int(qpos[-1])
    lo = max(0, first - window + 1) if window is not None else 0
    hi = max(last + 1 - min_dist, lo + 1)
    logits = torch.matmul(q, k[:, lo:hi].transpose(1, 2))
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap  # q carries the scaling already
    hk, gm, width = logits.shape
    m = qpos.numel()
    view = logits.view(hk, gm // m, m, width)
    kpos = torch.arange(lo, hi, device=q.device)
    c0 = max(first + 1 - min_dist - lo, 0)  # keys after the first query's last visible one: mask there only
    if c0 < width:
        future = kpos[c0:].view(1, -1) > qpos.view(-1, 1) - min_dist
        view[..., c0:].masked_fill_(future, float("-inf"))
    if window is not None:
        c1 = last - window + 1 - lo  # keys before this column are out of some query's window
        if c1 > 0:
            old = (qpos.view(-1, 1) - kpos[:c1].view(1, -1)) >= window
            view[..., :c1].masked_fill_(old, float("-inf"))
    if lse is None:  # softmax, keeping each row's log-sum-exp
        top = logits.amax(dim=-1, keepdim=True)
        mass = logits.sub_(top).exp_().sum(dim=-1, keepdim=True)
        return logits.div_(mass), lo, hi, (top + mass.log()).squeeze(-1)
    return logits.sub_(lse.unsqueeze(-1)).exp_(), lo, hi, lse


def _grouped(query: torch.Tensor, hk: int, scaling: float) -> torch.Tensor:
    """``[Hq, n, D]`` -> float32 ``[Hk, g, n, D]`` scaled (query heads ``h*g..h*g+g-1`` share KV head ``h``)."""
    hq, n, d = query.shape
    return (query.float() * scaling).view(hk, hq // hk, n, d)


def attend_and_score(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    q_start: int,
    total: torch.Tensor,
    scaling: float,
    softcap: float | None = None,
    window: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention output ``[n, Hq, Dv]`` (the query's dtype) of ``query [Hq, n, D]`` over ``key``,
    ``value`` ``[Hk, S, D]`` at positions ``0..S-1``, and each query's log-sum-exp ``[Hq, n]``;
    adds each key's received attention (summed over the ``n`` queries) to ``total [Hq, >=S]``
    float32, from the same probabilities."""
    hq, n, _ = query.shape
    hk, dv = key.shape[0], value.shape[-1]
    g = hq // hk
    q = _grouped(query, hk, scaling)
    k, v = key.float(), value.float()
    out = torch.empty(n, hq, dv, dtype=query.dtype, device=query.device)
    lse = torch.empty(hk, g, n, device=query.device)
    step = max(1, _BLOCK // max(hq * key.shape[1], 1))
    for a in range(0, n, step):
        b = min(a + step, n)
        qpos = torch.arange(q_start + a, q_start + b, device=query.device)
        qb = q[:, :, a:b].reshape(hk, g * (b - a), -1)
        p, lo, hi, block_lse = _block_probs(qb, k, qpos, softcap, window)
        o = torch.matmul(p, v[:, lo:hi])  # [Hk, g*m, Dv]
        out[a:b] = o.view(hq, b - a, dv).transpose(0, 1)
        total[:, lo:hi] += p.view(hq, b - a, hi - lo).sum(dim=1)
        lse[:, :, a:b] = block_lse.view(hk, g, b - a)
    return out, lse.view(hq, n)


def band_sums(
    query: torch.Tensor, key: torch.Tensor, lse: torch.Tensor, q_start: int, total: torch.Tensor,
    scaling: float, softcap: float | None = None, window: int | None = None,
) -> None:
    """Add to ``total [Hq, >=S]`` the attention each key gets from the queries ``0..BAND-1``
    positions after it, among ``query [Hq, n, D]`` (log-sum-exps ``lse [Hq, n]``): one batched
    product of each block of ``BAND`` queries with the ``2 * BAND`` keys around it."""
    hq, n, d = query.shape
    hk, s = key.shape[0], key.shape[1]
    g, band = hq // hk, BAND
    nb = math.ceil(n / band)
    q = F.pad(_grouped(query, hk, scaling), (0, 0, 0, nb * band - n))  # [Hk, g, nb*B, D]
    lse = F.pad(lse.float(), (0, nb * band - n), value=float("inf")).view(hk, g, nb, band, 1)
    k0 = q_start - band  # keys at positions k0 .. k0 + (nb+1)*B - 1, zero outside 0..S-1
    keys = torch.zeros(hk, (nb + 1) * band, d, device=key.device)
    a, b = max(k0, 0), min(k0 + (nb + 1) * band, s)
    keys[:, a - k0 : b - k0] = key[:, a:b].float()
    windows = keys.unfold(1, 2 * band, band)  # [Hk, nb, D, 2B]: keys of block j start at k0 + j*B
    logits = torch.matmul(q.view(hk, g, nb, band, d), windows.unsqueeze(1))  # [Hk, g, nb, B, 2B]
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    i = torch.arange(band, device=key.device).view(1, band, 1)
    c = torch.arange(2 * band, device=key.device).view(1, 1, 2 * band)
    j = torch.arange(nb, device=key.device).view(nb, 1, 1)
    dist = band + i - c  # query position minus key position
    ok = (dist >= 0) & (dist < band) & (k0 + j * band + c >= 0)
    if window is not None:
        ok &= dist < window
    probs = logits.sub_(lse).exp_().masked_fill_(~ok, 0.0)
    col = probs.sum(dim=3).view(hq, nb, 2 * band)
    per_pos = F.pad(col[..., :band].reshape(hq, nb * band), (0, band))  # positions k0 .. k0 + (nb+1)*B
    per_pos += F.pad(col[..., band:].reshape(hq, nb * band), (band, 0))
    a, b = max(k0, 0), min(k0 + (nb + 1) * band, s)
    total[:, a:b] += per_pos[:, a - k0 : b - k0]


def strided_positions(q_start: int, n: int, context_length: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Local indices of the scored queries among ``q_start..q_start+n-1`` and their weights.

    Scored: every ``stride``-th position counted back from the last context token (weight
    ``stride``, so the sum estimates all queries') and the last ``TAIL`` positions (weight 1).
    ``stride=1`` picks every query with weight 1.
    """
    pos = torch.arange(q_start, min(q_start + n, context_length))
    tail = pos >= context_length - TAIL
    picked = ((context_length - 1 - pos) % stride == 0) | tail
    weights = torch.where(tail, 1.0, float(stride))
    return (pos[picked] - q_start), weights[picked]


def score_queries(
    query: torch.Tensor,
    key: torch.Tensor,
    positions: torch.Tensor,
    weights: torch.Tensor,
    total: torch.Tensor,
    scaling: float,
    softcap: float | None = None,
    window: int | None = None,
    lse: torch.Tensor | None = None,
) -> None:
    """Add to ``total [Hq, >=S]`` the attention queries ``query [Hq, m, D]`` at ``positions [m]``
    (sorted) give each key, weighted by ``weights [m]``. Given their log-sum-exps ``lse [Hq, m]``,
    only keys ``BAND`` or more positions back count (the band is summed by :func:`band_sums`)."""
    hq, m = query.shape[:2]
    if m == 0:
        return
    hk = key.shape[0]
    g = hq // hk
    q = _grouped(query, hk, scaling)
    k = key.float()
    w = weights.to(device=query.device, dtype=torch.float32)
    step = max(1, _BLOCK // max(hq * key.shape[1], 1))
    min_dist = 0 if lse is None else BAND
    for a in range(0, m, step):
        b = min(a + step, m)
        qpos = positions[a:b].to(query.device)
        if int(qpos[-1]) < min_dist:
            continue
        part = None if lse is None else lse[:, a:b].float().reshape(hk, g * (b - a))
        qb = q[:, :, a:b].reshape(hk, g * (b - a), -1)
        p, lo, hi, _ = _block_probs(qb, k, qpos, softcap, window, part, min_dist)
        total[:, lo:hi] += torch.matmul(w[a:b].expand(hq, 1, b - a), p.view(hq, b - a, hi - lo)).squeeze(1)


def _causal_mask_matches(mask: torch.Tensor | None, q_start: int, n: int, s: int, window: int | None) -> bool:
    """Does the model's own mask say plain causal (and sliding-window) attention? Only then may
    this module stand in for the model's attention (a multimodal or chunked mask falls back to
    the model's own call)."""
    if mask is None:
        return True
    if mask.dim() != 4 or mask.shape[0] != 1 or mask.shape[-2:] != (n, s):
        return False
    ok = mask if mask.dtype == torch.bool else mask == 0
    qpos = torch.arange(q_start, q_start + n, device=mask.device).view(-1, 1)
    kpos = torch.arange(s, device=mask.device).view(1, -1)
    want = kpos <= qpos
    if window is not None:
        want &= (qpos - kpos) < window
    return bool((ok == want).all())


def flash_with_lse(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
                   scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """What transformers' SDPA computes on the CPU (``[1, Hq, n, D]`` inputs, keys expanded to the
    query heads as it does), through the same flash kernel, plus its log-sum-exp ``[Hq, n]``."""
    g = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(g, dim=1), value.repeat_interleave(g, dim=1)
    causal = mask is None and query.shape[2] > 1
    if mask is not None and mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=query.dtype).masked_fill_(~mask, float("-inf"))
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, 0.0, causal, attn_mask=mask, scale=scaling
    )
    return out.transpose(1, 2).contiguous(), lse[0]


class ReceivedAttention:
    """The received-attention sums of one prefill, for each requested query stride (module doc).

    ``fusable``: this module may compute the layer's attention output (nothing but causal
    attention in it); ``sdpa``: the model would call SDPA, so the flash kernel gives the same bits.
    The strided estimates never change the model's outputs: without the flash kernel (eager
    models, a GPU) the model attends itself and an extra pass gets the log-sum-exps.
    """

    def __init__(self, strides: tuple[int, ...], context_length: int) -> None:
        self.strides, self.context_length = strides, context_length
        self.exact: dict[int, torch.Tensor] = {}  # layer -> [Hq, T]
        self.band: dict[int, torch.Tensor] = {}  # layer -> [Hq, T], for the strided estimates
        self.picked: dict[int, dict[int, list[tuple[torch.Tensor, ...]]]] = {}  # stride -> layer -> parts
        self.layer_params: dict[int, tuple[float, float | None, int | None]] = {}  # scaling, softcap, window

    def _total(self, sums: dict[int, torch.Tensor], layer: int, like: torch.Tensor) -> torch.Tensor:
        if layer not in sums:
            sums[layer] = torch.zeros(like.shape[0], self.context_length, dtype=torch.float32, device=like.device)
        return sums[layer]

    def observe(
        self, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor | None,
        mask: torch.Tensor | None, kwargs: dict, q_start: int, fusable: bool, sdpa: bool = False,
    ) -> torch.Tensor | None:
        """One forward pass of ``layer``: ``query [1, Hq, n, D]``, ``key``/``value [1, Hk, S, D]``
        as the attention function gets them. Returns the attention output ``[1, n, Hq, Dv]`` when
        it was computed here, else None (the model attends)."""
        n, d = query.shape[2:]
        s = key.shape[2]
        scaling = kwargs.get("scaling") or d**-0.5
        softcap, window = kwargs.get("softcap"), kwargs.get("sliding_window")
        self.layer_params[layer] = (scaling, softcap, window)
        q, k = query[0].detach(), key[0].detach()
        strided = [st for st in self.strides if st > 1]
        exact = self._total(self.exact if 1 in self.strides else {}, layer, q)
        out = None
        fusable = fusable and value is not None and s == q_start + n
        if fusable and sdpa and not softcap and 1 not in self.strides and q.device.type == "cpu":
            out, lse = flash_with_lse(query, key, value, mask, scaling)  # the model's own mask: SDPA's output
        elif fusable and 1 in self.strides and _causal_mask_matches(mask, q_start, n, s, window):
            # exact sums: one pass, the output equal to the model's up to rounding
            o, lse = attend_and_score(q, k, value[0].detach(), q_start, exact, scaling, softcap, window)
            out = o.unsqueeze(0)
        else:  # the model attends; a scoring pass gets the sums and log-sum-exps (dummy values)
            _, lse = attend_and_score(q, k, k, q_start, exact, scaling, softcap, window)
        if strided:
            band_sums(q, k, lse, q_start, self._total(self.band, layer, q), scaling, softcap, window)
        for stride in strided:
            idx, weights = strided_positions(q_start, n, self.context_length, stride)
            part = (q[:, idx].float(), idx + q_start, weights, lse[:, idx].float())
            self.picked.setdefault(stride, {}).setdefault(layer, []).append(part)
        return out

    def finish(self, keys: dict[int, torch.Tensor]) -> dict[int, dict[int, torch.Tensor]]:
        """stride -> layer -> ``[Hq, T]`` sums; the strided ones add the kept queries' attention to
        keys ``BAND`` or more positions back (``keys``: layer -> ``[Hk, >=T, D]``, the dense cache)."""
        out: dict[int, dict[int, torch.Tensor]] = {}
        if 1 in self.strides:
            out[1] = self.exact
        for stride, layers in self.picked.items():
            out[stride] = {}
            for layer, parts in layers.items():
                q, pos, weights, lse = (torch.cat([p[i] for p in parts], dim=1 if i in (0, 3) else 0)
                                        for i in range(4))
                total = self.band[layer].clone()
                scaling, softcap, window = self.layer_params[layer]
                score_queries(q, keys[layer], pos, weights, total, scaling, softcap, window, lse)
                out[stride][layer] = total
        return out
