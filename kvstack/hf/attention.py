"""One attention hook, two jobs: masks from *true* token positions, and prefill captures.

kvstack registers ``kvstack_sdpa`` / ``kvstack_eager`` with transformers' attention
interface. Each wraps the model's own implementation and, only when asked, changes
what it sees:

* keys coming from a :class:`~kvstack.hf.cache.CompressedCache` carry a ``_kvstack``
  attribute with each row's original position and validity (ragged heads are padded
  for the call). The hook builds the causal / sliding-window mask from those positions,
  per KV head, so attention after eviction is exact.
* during prefill, a :class:`CaptureSession` records what stages asked for: question
  queries, last-window queries, or the attention each key received - the latter
  scored in query chunks, never as a T x T matrix.

Without either, the call goes straight to the wrapped implementation: same numbers.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from kvstack.errors import ModelError
from kvstack.hf.attention_scored import ReceivedAttention

_SESSION: contextvars.ContextVar[CaptureSession | None] = contextvars.ContextVar(
    "kvstack_capture", default=None
)


@dataclass
class RowMeta:
    """Attached to the key tensor a compressed cache returns: where each row came from."""

    positions: torch.Tensor  # [H_kv, S] int64 original positions
    valid: torch.Tensor  # [H_kv, S] bool (False = padding of a shorter head)
    query_positions: torch.Tensor  # [q] int64 positions of the tokens being processed
    window: int | None  # sliding window of this layer

    def mask(self, num_query_heads: int, dtype: torch.dtype) -> torch.Tensor:
        """Additive mask ``[1, Hq, q, S]`` from true positions (0 keep, dtype-min drop)."""
        return additive_mask(
            self.positions, self.valid, self.query_positions, self.window, num_query_heads, dtype
        )


def allowed(
    key_pos: torch.Tensor, valid: torch.Tensor, query_pos: torch.Tensor, window: int | None
) -> torch.Tensor:
    """Boolean ``[H, q, S]``: may query at ``query_pos[i]`` see key row ``s`` of head ``h``."""
    qp = query_pos.view(1, -1, 1)
    kp = key_pos.unsqueeze(1)
    ok = valid.unsqueeze(1) & (kp <= qp)
    if window is not None:
        ok &= (qp - kp) < window
    return ok


def additive_mask(
    key_pos: torch.Tensor,
    valid: torch.Tensor,
    query_pos: torch.Tensor,
    window: int | None,
    num_query_heads: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    ok = allowed(key_pos, valid, query_pos, window)
    groups = num_query_heads // ok.shape[0]
    if groups > 1:
        ok = ok.repeat_interleave(groups, dim=0)
    zero = torch.zeros((), dtype=dtype, device=ok.device)
    low = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=ok.device)
    return torch.where(ok, zero, low).unsqueeze(0)


@dataclass
class CaptureSession:
    """What the prefill driver collects while the model runs over the context and question.

    ``q_start`` is the position of the first token of the forward pass in flight (the
    driver sets it before each chunk); ``phase`` is ``"context"`` or ``"question"``.
    ``attention_strides``: the received-attention sums wanted, by query stride (1 = every
    query, exact; see :mod:`kvstack.hf.attention_scored`).
    """

    context_length: int
    attention_strides: tuple[int, ...] = ()
    window_queries: int = 0
    want_question: bool = False
    q_start: int = 0
    phase: str = "context"
    received: ReceivedAttention | None = None  # H2O's sums; set up from attention_strides
    window: dict[int, list[torch.Tensor]] = field(default_factory=dict)  # layer -> [Hq, n, D] parts
    question: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [Hq, q, D]
    params: dict[int, tuple[float | None, float | None]] = field(default_factory=dict)  # (scaling, softcap)

    def observe(
        self, module, query: torch.Tensor, key: torch.Tensor, kwargs: dict,
        value: torch.Tensor | None = None, mask: torch.Tensor | None = None, fusable: bool = False,
        sdpa: bool = False,
    ) -> torch.Tensor | None:
        """Record what was asked for; returns the attention output when H2O's scoring computed it
        in the same pass (``fusable``: it may; ``sdpa``: the model would call SDPA)."""
        layer = int(module.layer_idx)
        self.params[layer] = (kwargs.get("scaling"), kwargs.get("softcap"))
        q = query[0].detach()
        n_q = q.shape[1]
        if self.phase == "question":
            if self.want_question:
                self.question[layer] = q.float().clone()
            return None
        if self.window_queries:
            first = self.context_length - self.window_queries
            lo = max(first - self.q_start, 0)
            if lo < n_q:
                self.window.setdefault(layer, []).append(q[:, lo:].float().clone())
        if not self.attention_strides:
            return None
        if self.received is None:
            self.received = ReceivedAttention(self.attention_strides, self.context_length)
        fusable = fusable and not module.training and query.shape[0] == 1
        return self.received.observe(layer, query, key, value, mask, kwargs, self.q_start, fusable, sdpa)

    def window_queries_of(self, layer: int) -> torch.Tensor:
        return torch.cat(self.window[layer], dim=1)


def _wrap(base_name: str):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    def attention(module, query, key, value, attention_mask, **kwargs):
        fast = getattr(key, "_kvstack_fast", None)
        if fast is not None:  # a compressed layer offering its packed rows (kvstack.hf.fast_decode)
            out = fast.attend(module, query, kwargs) if base_name == "sdpa" else None
            if out is not None:
                return out, None
            key, value = fast.materialize()  # dense rows, carrying their metadata (``_kvstack``)
        meta = getattr(key, "_kvstack", None)
        if meta is not None:
            attention_mask = meta.mask(query.shape[1], query.dtype)
        session = _SESSION.get()
        if session is not None:
            # H2O's sums may come with the attention output itself (one pass): not with an SDPA
            # that drops Gemma 2's softcap (the output must stay the model's), nor with sinks
            fusable = meta is None and not (base_name == "sdpa" and kwargs.get("softcap")) and "s_aux" not in kwargs
            if isinstance(session, CaptureSession):
                out = session.observe(module, query, key, kwargs, value, attention_mask, fusable, base_name == "sdpa")
                if out is not None:
                    return out, None
            else:  # another recorder (KVzip's reconstruction pass) may attend itself, with the same kernel
                out = session.observe(module, query, key, kwargs, value, attention_mask, base_name == "sdpa")
                if out is not None:
                    return out, None
        if base_name == "eager":
            base = _eager_for(module)
        else:
            base = ALL_ATTENTION_FUNCTIONS[base_name]
        return base(module, query, key, value, attention_mask, **kwargs)

    return attention


def _eager_for(module):
    """The eager attention function of the module's own model file (it may add softcapping)."""
    import sys

    mod = sys.modules[type(module).__module__]
    fn = getattr(mod, "eager_attention_forward", None)
    if fn is None:
        raise ModelError(f"{type(module).__name__} has no eager attention function kvstack can wrap")
    return fn


_REGISTERED = False
SUPPORTED_BASES = ("sdpa", "eager")


def _register() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import AttentionInterface

    for base in SUPPORTED_BASES:
        AttentionInterface.register(f"kvstack_{base}", _wrap(base))
        ALL_MASK_ATTENTION_FUNCTIONS.register(f"kvstack_{base}", ALL_MASK_ATTENTION_FUNCTIONS[base])
    _REGISTERED = True


@contextlib.contextmanager
def enable(model) -> Iterator[None]:
    """Route the model's attention through kvstack's hook for the duration of the block.

    The previous implementation is restored afterwards, so the model is left as it was.
    Flash-attention models fall back to SDPA inside the block (same math).
    """
    _register()
    before = model.config._attn_implementation
    if before.startswith("kvstack_"):
        yield
        return
    base = before if before in SUPPORTED_BASES else "sdpa"
    model.set_attn_implementation(f"kvstack_{base}")
    if not model.config._attn_implementation.startswith("kvstack_"):
        raise ModelError(
            f"{type(model).__name__} does not let kvstack set its attention implementation "
            "(it does not use transformers' AttentionInterface); this architecture is not supported yet"
        )
    try:
        yield
    finally:
        model.set_attn_implementation(before)


@contextlib.contextmanager
def capturing(session: CaptureSession) -> Iterator[CaptureSession]:
    token = _SESSION.set(session)
    try:
        yield session
    finally:
        _SESSION.reset(token)
