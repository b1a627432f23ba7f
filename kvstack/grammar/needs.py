"""The names of what a stage may ask the prefill driver to capture, without torch.

A stage declares ``needs`` (a set of these names); the prefill driver (:mod:`kvstack.hf.prefill`)
hands each name to the capture provider registered for it (:mod:`kvstack.hf.captures`) and passes
the results to the stage as ``ctx.captures[name]``. The names live here, not in the stage or the
provider, so that neither has to import the other and the torch-free planner can read them too.
"""

from __future__ import annotations

from collections.abc import Iterable

# --- captured by the attention hook during the prefill (kvstack.hf.attention) -----------------
NEED_QUESTION_QUERIES = "question_queries"  # post-RoPE queries of the question tokens, per layer
NEED_WINDOW_QUERIES = "window_queries"  # post-RoPE queries of the last `window` context tokens
NEED_ATTENTION = "attention"  # attention each key received, summed over all context queries
ATTN_PARAMS = "attn_params"  # always captured with the above: layer -> (scaling, softcap) the model uses

# --- supplied by the capture providers (kvstack.hf.captures) --------------------------------
NEED_TOKEN_NLL = "token_nll"  # [T] -log p(token | earlier context) of every context token, from the prefill's logits
NEED_LOCAL_NLL = "local_nll"  # [T] -log p(token | only the `window` tokens before it): local_nll_need(window)
NEED_ROPE = "rope"  # layer index -> Rotary (what the model's rotary embedding applies)
NEED_OPROJ = "o_proj"  # layer -> [Hq, D, hidden] float32, each query head's rows of W_o^T
NEED_KVZIP = "kvzip"  # layer -> [Hkv, T] max reconstruction attention per context position
KVZIP_SECONDS = "kvzip_seconds"  # supplied with NEED_KVZIP: seconds the reconstruction pass took


def attention_need(stride: int) -> str:
    """The capture name of received-attention sums over every ``stride``-th query (1: exact)."""
    return NEED_ATTENTION if stride == 1 else f"{NEED_ATTENTION}:stride={stride}"


def attention_strides(needs: Iterable[str]) -> tuple[int, ...]:
    """The query strides of the received-attention captures named in ``needs`` (sorted)."""
    out = set()
    for need in needs:
        if need == NEED_ATTENTION:
            out.add(1)
        elif need.startswith(f"{NEED_ATTENTION}:stride="):
            out.add(int(need.rsplit("=", 1)[1]))
    return tuple(sorted(out))


def local_nll_need(window: int) -> str:
    """The capture name of windowed surprisal (each token predicted from the ``window`` tokens before it)."""
    return f"{NEED_LOCAL_NLL}:window={window}"


def local_nll_windows(needs: Iterable[str]) -> tuple[int, ...]:
    """The windows of the windowed-surprisal captures named in ``needs`` (sorted)."""
    return tuple(sorted({int(n.rsplit("=", 1)[1]) for n in needs if n.startswith(f"{NEED_LOCAL_NLL}:window=")}))
