"""multihead: multi-head attention on numpy arrays.

Semantics (masks, causal alignment, windows, padding, ALiBi, softcap, sinks, fully
masked rows) are those of the C++ library, spelled out in docs/CONTRACT.md.

    out = multihead.attention(q, k, v, causal="bottom_right")
    out, lse = multihead.attention(q, k, v, return_lse=True)
    dq, dk, dv, dbias, dsinks = multihead.attention_backward(dout, q, k, v, out, lse)

Errors raise multihead.Error, a ValueError carrying the library's message and its
parts as attributes (kind, tensor, dim, expected, got).
"""

from ._multihead import (
    Error,
    attention,
    attention_backward,
    attention_varlen,
    attention_varlen_backward,
    get_num_threads,
    set_num_threads,
)

Error.__module__ = __name__  # shown as multihead.Error

__all__ = [
    "Error",
    "attention",
    "attention_backward",
    "attention_varlen",
    "attention_varlen_backward",
    "get_num_threads",
    "set_num_threads",
]
