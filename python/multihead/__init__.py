"""multihead: multi-head attention on numpy arrays.

Semantics (masks, causal alignment, windows, padding, ALiBi, softcap, sinks, fully
masked rows) are those of the C++ library, spelled out in docs/CONTRACT.md.

    out = multihead.attention(q, k, v, causal="bottom_right")
    out, lse = multihead.attention(q, k, v, return_lse=True)
    out = multihead.attention_cached(q, cache, [seq], k_new=k, v_new=v)  # over a KVCache
    dq, dk, dv, dbias, dsinks = multihead.attention_backward(dout, q, k, v, out, lse)

The module, weight-compatible with torch.nn.MultiheadAttention (batch-first):

    m = multihead.MultiHeadAttention(512, 8)
    m.load_state_dict({k: v.detach().numpy() for k, v in torch_mha.state_dict().items()})
    out, weights = m.forward(x, need_weights=True)      # self-attention
    dx, _, _ = m.backward(dout); grads = m.grads()

Errors raise multihead.Error, a ValueError carrying the library's message and its
parts as attributes (kind, tensor, dim, expected, got).
"""

from ._multihead import (
    Error,
    KVCache,
    MultiHeadAttention,
    apply_rotary,
    attention,
    attention_backward,
    attention_cached,
    attention_varlen,
    attention_varlen_backward,
    get_num_threads,
    set_num_threads,
)

Error.__module__ = __name__  # shown as multihead.Error
MultiHeadAttention.__module__ = __name__
KVCache.__module__ = __name__

__all__ = [
    "Error",
    "KVCache",
    "MultiHeadAttention",
    "apply_rotary",
    "attention",
    "attention_backward",
    "attention_cached",
    "attention_varlen",
    "attention_varlen_backward",
    "get_num_threads",
    "set_num_threads",
]
