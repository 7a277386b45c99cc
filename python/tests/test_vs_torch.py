"""The bindings against an independent peer: PyTorch computing the explicit math in
float64 (softmax(q k^T * scale) with disallowed keys at -inf, then P v), with autograd
for the backward. Plain, causal (both alignments), GQA/MQA and masked cases."""

import numpy as np
import pytest

import multihead

TOL = 1e-5  # fp32 vs float64, relative to the largest reference magnitude (>= 1)


def torch_attention(q, k, v, dout, causal=None, mask=None):
    """out (B, Lq, H, Dv), lse (B, H, Lq), dq, dk, dv, all float64 numpy."""
    # Skipped per test, not per module: a module-level skip collects no test and
    # pytest then exits 5, which ctest would count as a failure.
    torch = pytest.importorskip("torch")
    q, k, v = (torch.tensor(t, dtype=torch.float64, requires_grad=True) for t in (q, k, v))
    B, Lq, H, D = q.shape
    Lk, Hkv = k.shape[1], k.shape[2]
    # GQA: query head h reads key/value head h // (H / Hkv).
    kh = k.repeat_interleave(H // Hkv, dim=2).permute(0, 2, 1, 3)
    vh = v.repeat_interleave(H // Hkv, dim=2).permute(0, 2, 1, 3)
    s = q.permute(0, 2, 1, 3) @ kh.transpose(-1, -2) / D**0.5  # (B, H, Lq, Lk)

    allowed = torch.ones(B, H, Lq, Lk, dtype=torch.bool)
    if causal is not None:
        offset = 0 if causal == "top_left" else Lk - Lq
        i = torch.arange(Lq)[:, None]
        j = torch.arange(Lk)[None, :]
        allowed &= j <= i + offset
    if mask is not None:
        allowed &= torch.from_numpy(np.broadcast_to(mask, (B, H, Lq, Lk)).copy())
    live = allowed.any(dim=-1, keepdim=True)
    # Fully masked rows: scores 0 before the softmax (no NaN in the graph), P 0 after.
    s = torch.where(allowed, s, torch.tensor(-np.inf, dtype=torch.float64))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.where(live, torch.softmax(torch.where(live, s, torch.zeros_like(s)), dim=-1), torch.zeros_like(s))
    out = (p @ vh).permute(0, 2, 1, 3)
    out.backward(torch.tensor(dout, dtype=torch.float64))
    return [t.detach().numpy() for t in (out, lse, q.grad, k.grad, v.grad)]


def assert_close(got, ref, what):
    got = np.asarray(got, np.float64)
    assert got.shape == ref.shape, what
    assert not np.isnan(got).any(), what
    inf = np.isinf(ref)
    assert np.array_equal(got[inf], ref[inf]), f"{what}: infinities differ"
    magnitude = max(1.0, float(np.abs(ref[~inf]).max(initial=0)))
    err = float(np.abs(got[~inf] - ref[~inf]).max(initial=0))
    assert err <= TOL * magnitude, f"{what}: max error {err:.3g} > {TOL:g} * {magnitude:.3g}"


def compare(rng, B, Lq, Lk, H, Hkv, D, Dv, causal=None, mask=None):
    q = rng.standard_normal((B, Lq, H, D)).astype(np.float32)
    k = rng.standard_normal((B, Lk, Hkv, D)).astype(np.float32)
    v = rng.standard_normal((B, Lk, Hkv, Dv)).astype(np.float32)
    dout = rng.standard_normal((B, Lq, H, Dv)).astype(np.float32)
    ref = torch_attention(q, k, v, dout, causal=causal, mask=mask)

    out, lse = multihead.attention(q, k, v, causal=causal, mask=mask, return_lse=True)
    dq, dk, dv, dbias, dsinks = multihead.attention_backward(dout, q, k, v, out, lse, causal=causal, mask=mask)
    assert dbias is None and dsinks is None
    for name, got, want in zip(("out", "lse", "dq", "dk", "dv"), (out, lse, dq, dk, dv), ref):
        assert_close(got, want, name)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.mark.parametrize("shape", [(2, 7, 7, 4, 16, 16), (1, 1, 33, 2, 64, 64), (3, 17, 5, 3, 8, 11)])
def test_plain(rng, shape):
    B, Lq, Lk, H, D, Dv = shape
    compare(rng, B, Lq, Lk, H, H, D, Dv)


@pytest.mark.parametrize("causal", ["top_left", "bottom_right"])
@pytest.mark.parametrize("lq,lk", [(9, 9), (5, 12), (12, 5)])
def test_causal(rng, causal, lq, lk):
    compare(rng, 2, lq, lk, 3, 3, 16, 16, causal=causal)


@pytest.mark.parametrize("H,Hkv", [(8, 2), (6, 3), (4, 1)])
def test_gqa(rng, H, Hkv):
    compare(rng, 2, 11, 13, H, Hkv, 32, 24)
    compare(rng, 2, 11, 13, H, Hkv, 32, 24, causal="bottom_right")


@pytest.mark.parametrize("shape", [(2, 4, 9, 13), (9, 13), (2, 1, 1, 13)])
def test_masked(rng, shape):
    mask = rng.random(shape) < 0.6
    mask[..., -1, :] = False  # includes fully masked rows
    compare(rng, 2, 9, 13, 4, 2, 16, 16, mask=mask)
    compare(rng, 2, 9, 13, 4, 2, 16, 16, mask=mask, causal="top_left")
