"""A float64 numpy oracle for the Python tests, written from docs/CONTRACT.md alone:
straightforward per-(b, h) matrices, no tiling, no shared code with the library."""

import numpy as np

F32_LOWEST = float(np.finfo(np.float32).min)


def kv_offset(causal, lq, lk):
    """The diagonal: 0 for causal top-left, Lk_b - Lq_b otherwise (bottom-right causal,
    windows without causal, and ALiBi distances)."""
    return 0 if causal == "top_left" else lk - lq


def _allowed(b, h, lq, lk, lk_b, off, causal, window, mask):
    """(Lq, Lk) bool: which keys each query may attend."""
    i = np.arange(lq)[:, None]
    j = np.arange(lk)[None, :]
    ok = j < lk_b
    if causal is not None:
        ok = ok & (j <= i + off)
    if window is not None:
        left, right = window
        if left >= 0:
            ok = ok & (j >= i + off - left)
        if right >= 0:
            ok = ok & (j <= i + off + right)
    if mask is not None:
        ok = ok & mask[b, h]
    return ok


def _scores(qh, kh, scale, softcap):
    raw = scale * (qh @ kh.T)
    if softcap > 0:
        return raw, softcap * np.tanh(raw / softcap)
    return raw, raw


def _head_setup(q, k, v, scale, mask, bias, seqlens_k):
    q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
    B, Lq, H, D = q.shape
    Lk, Hkv = k.shape[1], k.shape[2]
    assert H % Hkv == 0
    if scale is None:
        scale = 1.0 / np.sqrt(D)
    full = (B, H, Lq, Lk)
    mask_b = None if mask is None else np.broadcast_to(np.asarray(mask, bool), full)
    bias_b = None if bias is None else np.broadcast_to(np.asarray(bias, np.float64), full)
    lks = [Lk if seqlens_k is None else int(seqlens_k[b]) for b in range(B)]
    return q, k, v, float(scale), mask_b, bias_b, lks, H // Hkv


def _probs_row_stats(qh, kh, b, h, lq, lk, lk_b, scale, causal, window, mask_b, bias_b,
                     alibi_slopes, softcap, sinks):
    """Scores, probabilities (Lq, Lk), lse (Lq), and the raw scores for softcap."""
    off = kv_offset(causal, lq, lk_b)
    ok = _allowed(b, h, lq, lk, lk_b, off, causal, window, mask_b)
    raw, s = _scores(qh, kh, scale, softcap)
    if bias_b is not None:
        s = s + bias_b[b, h]
        ok = ok & (bias_b[b, h] > F32_LOWEST)
    if alibi_slopes is not None:
        i = np.arange(lq)[:, None]
        j = np.arange(lk)[None, :]
        s = s - float(alibi_slopes[h]) * np.abs(j - (i + off))
    s = np.where(ok, s, -np.inf)
    row_max = s.max(axis=1, initial=-np.inf)
    if sinks is not None:
        row_max = np.maximum(row_max, float(sinks[h]))
    live = ok.any(axis=1)
    m = np.where(live, row_max, 0.0)
    total = np.exp(s - m[:, None]).sum(axis=1)
    if sinks is not None:
        total = total + np.exp(float(sinks[h]) - m)
    lse = np.where(live, m + np.log(np.where(live, total, 1.0)), -np.inf)
    p = np.where(ok & live[:, None], np.exp(s - np.where(live, lse, 0.0)[:, None]), 0.0)
    return p, lse, raw, live


def forward(q, k, v, *, scale=None, causal=None, window=None, mask=None, bias=None,
            seqlens_k=None, alibi_slopes=None, softcap=0.0, sinks=None):
    """out (B, Lq, H, Dv), lse (B, H, Lq), probs (B, H, Lq, Lk), all float64."""
    q, k, v, scale, mask_b, bias_b, lks, group = _head_setup(q, k, v, scale, mask, bias, seqlens_k)
    B, Lq, H, _ = q.shape
    Lk, Dv = k.shape[1], v.shape[3]
    out = np.zeros((B, Lq, H, Dv))
    lse = np.full((B, H, Lq), -np.inf)
    probs = np.zeros((B, H, Lq, Lk))
    for b in range(B):
        for h in range(H):
            g = h // group
            p, l, _, _ = _probs_row_stats(q[b, :, h], k[b, :, g], b, h, Lq, Lk, lks[b], scale, causal,
                                          window, mask_b, bias_b, alibi_slopes, softcap, sinks)
            probs[b, h], lse[b, h] = p, l
            out[b, :, h] = p @ v[b, :, g]
    return out, lse, probs


def backward(dout, q, k, v, *, scale=None, causal=None, window=None, mask=None, bias=None,
             seqlens_k=None, alibi_slopes=None, softcap=0.0, sinks=None):
    """(dq, dk, dv, dbias, dsinks) by the analytical formulas of CONTRACT.md, float64;
    dbias/dsinks are None without bias/sinks."""
    dout = np.asarray(dout, np.float64)
    q, k, v, scale, mask_b, bias_b, lks, group = _head_setup(q, k, v, scale, mask, bias, seqlens_k)
    B, Lq, H, _ = q.shape
    Lk = k.shape[1]
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    ds_full = np.zeros((B, H, Lq, Lk))
    dsinks = None if sinks is None else np.zeros(H)
    for b in range(B):
        for h in range(H):
            g = h // group
            p, lse, raw, live = _probs_row_stats(q[b, :, h], k[b, :, g], b, h, Lq, Lk, lks[b], scale,
                                                 causal, window, mask_b, bias_b, alibi_slopes, softcap,
                                                 sinks)
            o = p @ v[b, :, g]
            do = dout[b, :, h]
            d_row = (do * o).sum(axis=1)
            dp = do @ v[b, :, g].T
            ds = p * (dp - d_row[:, None])
            ds_full[b, h] = ds
            dv[b, :, g] += p.T @ do
            if softcap > 0:
                ds = ds * (1.0 - np.tanh(raw / softcap) ** 2)
            dq[b, :, h] = scale * ds @ k[b, :, g]
            dk[b, :, g] += scale * ds.T @ q[b, :, h]
            if sinks is not None:
                dsinks[h] -= np.where(live, np.exp(float(sinks[h]) - np.where(live, lse, 0.0)) * d_row,
                                      0.0).sum()
    dbias = None if bias is None else reduce_to_shape(ds_full, np.shape(bias))
    return dq, dk, dv, dbias, dsinks


def reduce_to_shape(full, shape):
    """Sums a (B, H, Lq, Lk) array over the dims a broadcast of `shape` expanded."""
    lead = full.ndim - len(shape)
    r = full.sum(axis=tuple(range(lead))) if lead else full
    axes = tuple(d for d, n in enumerate(shape) if n == 1 and r.shape[d] != 1)
    return r.sum(axis=axes, keepdims=True).reshape(shape)


def varlen_forward(q, k, v, cu_q, cu_k, **options):
    """Packed sequences, one oracle call each: out (total_q, H, Dv), lse (H, total_q)."""
    H, Dv = q.shape[1], v.shape[2]
    out = np.zeros((q.shape[0], H, Dv))
    lse = np.full((H, q.shape[0]), -np.inf)
    for s in range(len(cu_q) - 1):
        qs, ks = slice(cu_q[s], cu_q[s + 1]), slice(cu_k[s], cu_k[s + 1])
        o, l, _ = forward(q[None, qs], k[None, ks], v[None, ks], **options)
        out[qs], lse[:, qs] = o[0], l[0]
    return out, lse


def varlen_backward(dout, q, k, v, cu_q, cu_k, **options):
    dq, dk, dv = (np.zeros(t.shape) for t in (q, k, v))
    dsinks = None if options.get("sinks") is None else np.zeros(q.shape[1])
    for s in range(len(cu_q) - 1):
        qs, ks = slice(cu_q[s], cu_q[s + 1]), slice(cu_k[s], cu_k[s + 1])
        g = backward(dout[None, qs], q[None, qs], k[None, ks], v[None, ks], **options)
        dq[qs], dk[ks], dv[ks] = g[0][0], g[1][0], g[2][0]
        if dsinks is not None:
            dsinks += g[4]
    return dq, dk, dv, None, dsinks


def round_bf16(x):
    """float32 -> nearest-even bfloat16, returned as float32 (finite inputs)."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32).reshape(np.shape(x))
