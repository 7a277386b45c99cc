"""multihead.attention_cached from Python: attention over a KVCache's blocks compared
with a float64 numpy reference run on the cache's gather() (keys as stored), for every
cache dtype, decode and chunked prefill, the score options, the k_new append path and
rotary (checked against a numpy rotate_half / interleaved rotation); rejected calls
change nothing."""

import numpy as np
import pytest

import multihead


def reference(q, ks, vs, *, causal=True, window=None, softcap=0.0, scale=None, alibi=None, sinks=None):
    """q (Lq, H, D), ks (Lk, Hkv, D), vs (Lk, Hkv, Dv) -> out (Lq, H, Dv), lse (H, Lq), in float64."""
    q, ks, vs = (np.asarray(x, np.float64) for x in (q, ks, vs))
    Lq, H, D = q.shape
    Lk, Hkv, _ = ks.shape
    g = H // Hkv
    scale = 1.0 / np.sqrt(D) if scale is None else scale
    out = np.zeros((Lq, H, vs.shape[2]))
    lse = np.full((H, Lq), -np.inf)
    for h in range(H):
        s = scale * q[:, h, :] @ ks[:, h // g, :].T  # (Lq, Lk)
        if softcap > 0:
            s = softcap * np.tanh(s / softcap)
        i = np.arange(Lq)[:, None] + (Lk - Lq)
        j = np.arange(Lk)[None, :]
        if alibi is not None:
            s = s - alibi[h] * np.abs(j - i)
        allowed = np.ones_like(s, dtype=bool)
        if causal:
            allowed &= j <= i
        if window is not None:
            if window[0] >= 0:
                allowed &= j >= i - window[0]
            if window[1] >= 0:
                allowed &= j <= i + window[1]
        s = np.where(allowed, s, -np.inf)
        for r in range(Lq):
            if not allowed[r].any():
                continue
            terms = s[r][allowed[r]]
            m = terms.max() if sinks is None else max(terms.max(), sinks[h])
            total = np.exp(s[r] - m)[allowed[r]].sum() + (0.0 if sinks is None else np.exp(sinks[h] - m))
            lse[h, r] = m + np.log(total)
            p = np.where(allowed[r], np.exp(s[r] - lse[h, r]), 0.0)
            out[r, h] = p @ vs[:, h // g, :]
    return out, lse


def rotate(x, positions, rotary_dim, interleaved, base=10000.0):
    """x (L, heads, D), positions (L,): RoPE in float64."""
    x = np.asarray(x, np.float64).copy()
    half = rotary_dim // 2
    theta = positions[:, None].astype(np.float64) * base ** (-2.0 * np.arange(half) / rotary_dim)  # (L, half)
    c = np.cos(theta).astype(np.float32).astype(np.float64)[:, None, :]
    s = np.sin(theta).astype(np.float32).astype(np.float64)[:, None, :]
    if interleaved:
        a, b = x[..., 0:rotary_dim:2].copy(), x[..., 1:rotary_dim:2].copy()
        x[..., 0:rotary_dim:2], x[..., 1:rotary_dim:2] = a * c - b * s, b * c + a * s
    else:
        a, b = x[..., :half].copy(), x[..., half:rotary_dim].copy()
        x[..., :half], x[..., half:rotary_dim] = a * c - b * s, b * c + a * s
    return x


def make_cache(rng, dtype, lengths, Hkv=2, D=16, Dv=16, block_size=16):
    cache = multihead.KVCache(Hkv, D, v_head_dim=Dv, capacity=4096, block_size=block_size, dtype=dtype)
    ids = []
    for n in lengths:
        s = cache.new_sequence()
        cache.append(s, rng.standard_normal((n, Hkv, D)).astype(np.float32),
                     rng.standard_normal((n, Hkv, Dv)).astype(np.float32))
        ids.append(s)
    return cache, ids


TOL = dict(rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8"])
@pytest.mark.parametrize("Lq", [1, 5])
@pytest.mark.parametrize("opts", [
    {},
    {"causal": False},
    {"window": (20, -1)},
    {"softcap": 6.0, "scale": 0.3},
    {"alibi": True, "sinks": True},
])
def test_matches_numpy_on_gathered_keys(dtype, Lq, opts):
    rng = np.random.default_rng(hash((dtype, Lq, tuple(opts))) % 2**32)
    H, Hkv, D = 4, 2, 16
    cache, ids = make_cache(rng, dtype, [37, 90, 3], Hkv=Hkv, D=D, Dv=D)
    q = rng.standard_normal((3, Lq, H, D)).astype(np.float32)
    k_new = rng.standard_normal((3, Lq, Hkv, D)).astype(np.float32)
    v_new = rng.standard_normal((3, Lq, Hkv, D)).astype(np.float32)
    alibi = rng.uniform(0.05, 0.5, H).astype(np.float32) if opts.get("alibi") else None
    sinks = rng.uniform(-1, 2, H).astype(np.float32) if opts.get("sinks") else None
    kw = {k: v for k, v in opts.items() if k not in ("alibi", "sinks")}
    out, lse = multihead.attention_cached(q, cache, ids, k_new=k_new, v_new=v_new, return_lse=True,
                                          alibi_slopes=alibi, sinks=sinks, **kw)
    assert out.shape == (3, Lq, H, D) and lse.shape == (3, H, Lq)
    for b, s in enumerate(ids):
        ks, vs = cache.gather(s)
        assert ks.shape[0] == [37, 90, 3][b] + Lq
        ref_out, ref_lse = reference(q[b], ks, vs, alibi=alibi, sinks=sinks, **kw)
        np.testing.assert_allclose(out[b], ref_out, **TOL)
        np.testing.assert_allclose(lse[b], ref_lse, **TOL)


@pytest.mark.parametrize("interleaved", [False, True])
def test_rotary_rotates_q_and_new_keys_at_absolute_positions(interleaved):
    rng = np.random.default_rng(5 + interleaved)
    H, Hkv, D, Lq, rd = 4, 2, 16, 3, 12
    lengths = [10, 0]
    cache, ids = make_cache(rng, "float32", lengths, Hkv=Hkv, D=D, Dv=D)
    q = rng.standard_normal((2, Lq, H, D)).astype(np.float32)
    k_new = rng.standard_normal((2, Lq, Hkv, D)).astype(np.float32)
    v_new = rng.standard_normal((2, Lq, Hkv, D)).astype(np.float32)
    out = multihead.attention_cached(q, cache, ids, k_new=k_new, v_new=v_new, rotary_dim=rd,
                                     rotary_interleaved=interleaved)
    for b, s in enumerate(ids):
        pos = lengths[b] + np.arange(Lq)
        ks, vs = cache.gather(s)
        np.testing.assert_allclose(ks[lengths[b]:], rotate(k_new[b], pos, rd, interleaved), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(vs[lengths[b]:], v_new[b])
        ref_out, _ = reference(rotate(q[b], pos, rd, interleaved), ks, vs)
        np.testing.assert_allclose(out[b], ref_out, **TOL)


def test_decode_token_by_token_matches_full_causal_attention():
    rng = np.random.default_rng(11)
    H, Hkv, D, L = 4, 1, 32, 70
    cache = multihead.KVCache(Hkv, D, capacity=128, block_size=8)
    s = cache.new_sequence()
    q = rng.standard_normal((L, H, D)).astype(np.float32)
    k = rng.standard_normal((L, Hkv, D)).astype(np.float32)
    v = rng.standard_normal((L, Hkv, D)).astype(np.float32)
    outs = [multihead.attention_cached(q[None, t:t + 1], cache, [s], k_new=k[None, t:t + 1], v_new=v[None, t:t + 1])[0]
            for t in range(L)]
    ref_out, _ = reference(q, k, v)
    np.testing.assert_allclose(np.concatenate(outs), ref_out, **TOL)
    # Against torch in float64 too, where torch is installed.
    torch = pytest.importorskip("torch")
    qt, kt, vt = (torch.from_numpy(x.astype(np.float64)).transpose(0, 1) for x in (q, k, v))
    scores = qt @ kt.expand(H, L, D).transpose(1, 2) / np.sqrt(D)
    scores = scores.masked_fill(torch.triu(torch.ones(L, L, dtype=torch.bool), 1), float("-inf"))
    ref_torch = (torch.softmax(scores, -1) @ vt.expand(H, L, D)).transpose(0, 1).numpy()
    np.testing.assert_allclose(np.concatenate(outs), ref_torch, **TOL)


def snapshot(cache, ids):
    state = [cache.num_free_blocks(), cache.used_tokens()]
    for i in ids:
        k, v = cache.gather(i)
        state.append((cache.length(i), cache.block_table(i).tobytes(), k.tobytes(), v.tobytes()))
    return state


def test_rejected_calls_change_nothing():
    rng = np.random.default_rng(3)
    cache, ids = make_cache(rng, "int8", [5, 9])
    q = rng.standard_normal((2, 2, 4, 16)).astype(np.float32)
    k_new = rng.standard_normal((2, 2, 2, 16)).astype(np.float32)
    v_new = rng.standard_normal((2, 2, 2, 16)).astype(np.float32)
    before = snapshot(cache, ids)
    bad_k = k_new.copy()
    bad_k[1, 1, 0, 3] = np.nan  # the second sequence's token cannot be quantized
    cases = [
        (dict(k_new=bad_k, v_new=v_new), "k_new"),
        (dict(k_new=k_new), "v_new"),
        (dict(k_new=k_new, v_new=v_new, window=(-5, 0)), "options.window"),
        (dict(k_new=k_new, v_new=v_new, rotary_dim=5), "rotary_dim"),
        (dict(k_new=k_new, v_new=v_new, scale=0.0), "options.scale"),
    ]
    for kw, tensor in cases:
        with pytest.raises(multihead.Error) as e:
            multihead.attention_cached(q, cache, ids, **kw)
        assert e.value.tensor == tensor, str(e.value)
        assert snapshot(cache, ids) == before
    with pytest.raises(multihead.Error) as e:
        multihead.attention_cached(q, cache, [ids[0], ids[0]], k_new=k_new, v_new=v_new)
    assert e.value.tensor == "seqs"
    with pytest.raises(multihead.Error) as e:
        multihead.attention_cached(q[:, :, :, :8], cache, ids)
    assert e.value.tensor == "q"
    assert snapshot(cache, ids) == before
