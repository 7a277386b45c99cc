"""The Python bindings against the float64 oracle of oracle.py (docs/CONTRACT.md),
forward and backward, for every option of the contract."""

import os
import tracemalloc
import zlib

import numpy as np
import pytest

import multihead
import oracle

FWD_TOL = 1e-5  # fp32 vs float64, relative to the largest reference magnitude (>= 1)
BWD_TOL = 2e-5
BF16_TOL = 2e-2  # bf16 inputs and probabilities: a few bf16 ulps (2^-8)


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def assert_close(got, ref, tol, what):
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape}, expected {ref.shape}"
    assert not np.isnan(got).any(), f"{what}: NaN"
    inf = np.isinf(ref)
    assert np.array_equal(np.isinf(got), inf), f"{what}: infinities differ"
    assert np.array_equal(got[inf], ref[inf]), f"{what}: infinities differ in sign"
    if (~inf).any():
        magnitude = max(1.0, float(np.abs(ref[~inf]).max()))
        err = float(np.abs(got[~inf] - ref[~inf]).max())
        assert err <= tol * magnitude, f"{what}: max error {err:.3g} > {tol:g} * {magnitude:.3g}"


def check(q, k, v, rng, tol_fwd=FWD_TOL, tol_bwd=BWD_TOL, dtype="float32", **opts):
    """Forward (out, lse, probs) and backward of the bindings against the oracle; the
    oracle sees the inputs the library computes with (rounded for bf16)."""
    if dtype == "bfloat16":
        qr, kr, vr = (oracle.round_bf16(np.ascontiguousarray(t)) for t in (q, k, v))
    else:
        qr, kr, vr = q, k, v
    out, lse, probs = multihead.attention(q, k, v, return_lse=True, return_probs=True, dtype=dtype, **opts)
    ref_out, ref_lse, ref_probs = oracle.forward(qr, kr, vr, **opts)
    assert out.dtype == lse.dtype == probs.dtype == np.float32
    assert_close(out, ref_out, tol_fwd, "out")
    assert_close(lse, ref_lse, tol_fwd, "lse")
    assert_close(probs, ref_probs, tol_fwd, "probs")

    dout = rand(rng, *out.shape)
    grads = multihead.attention_backward(dout, q, k, v, out, lse, dtype=dtype, **opts)
    ref = oracle.backward(dout, qr, kr, vr, **opts)
    for name, got, want in zip(("dq", "dk", "dv", "dbias", "dsinks"), grads, ref):
        if want is None:
            assert got is None, f"{name}: expected None"
        else:
            assert got.dtype == np.float32
            assert_close(got, want, tol_bwd, name)
    return out, lse, probs, grads


def qkv(rng, B=2, Lq=5, Lk=7, H=4, Hkv=None, D=8, Dv=None):
    Hkv = H if Hkv is None else Hkv
    Dv = D if Dv is None else Dv
    return rand(rng, B, Lq, H, D), rand(rng, B, Lk, Hkv, D), rand(rng, B, Lk, Hkv, Dv)


@pytest.fixture
def rng(request):
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


@pytest.mark.parametrize("shape", [
    dict(), dict(B=1, Lq=1, Lk=1, H=1, D=1), dict(Lq=9, Lk=3, D=16, Dv=5), dict(Lq=33, Lk=70, H=2, D=64),
])
def test_plain(rng, shape):
    check(*qkv(rng, **shape), rng)


def test_scale(rng):
    check(*qkv(rng), rng, scale=0.7)
    check(*qkv(rng), rng, scale=-2.0)


@pytest.mark.parametrize("causal", ["top_left", "bottom_right"])
@pytest.mark.parametrize("lq,lk", [(6, 6), (4, 9), (9, 4)])
def test_causal(rng, causal, lq, lk):
    check(*qkv(rng, Lq=lq, Lk=lk), rng, causal=causal)


@pytest.mark.parametrize("window", [(2, 0), (1, 1), (-1, 2), (3, -1), (0, 0)])
@pytest.mark.parametrize("causal", [None, "top_left", "bottom_right"])
def test_window(rng, window, causal):
    check(*qkv(rng, Lq=6, Lk=9), rng, window=window, causal=causal)


@pytest.mark.parametrize("H,Hkv", [(6, 2), (6, 3), (4, 1)])
def test_gqa_mqa(rng, H, Hkv):
    check(*qkv(rng, H=H, Hkv=Hkv, Dv=3), rng, causal="bottom_right")


@pytest.mark.parametrize("shape", [(2, 4, 5, 7), (5, 7), (2, 1, 1, 7), (1, 4, 5, 1), (7,), (4, 1, 7)])
def test_mask(rng, shape):
    mask = rng.random(shape) < 0.7
    check(*qkv(rng), rng, mask=mask)


def expect_dtype_error(call, tensor, hint=""):
    with pytest.raises(multihead.Error) as info:
        call()
    assert (info.value.kind, info.value.tensor) == ("InvalidArgument", tensor), str(info.value)
    assert hint in info.value.expected, str(info.value)


def test_float_or_int_mask_was_silently_cast_to_bool(rng):
    # A PyTorch float mask (0 keep, -inf drop) cast to bool came out inverted: mask takes
    # bool only, and the error says where an additive mask goes.
    q, k, v = qkv(rng)
    for mask in [np.where(rng.random((5, 7)) < 0.5, 0.0, -np.inf).astype(np.float32),
                 (rng.random((5, 7)) < 0.5).astype(np.int64)]:
        expect_dtype_error(lambda: multihead.attention(q, k, v, mask=mask), "mask", "bias")


def test_bool_bias_was_silently_read_as_one(rng):
    q, k, v = qkv(rng)
    expect_dtype_error(lambda: multihead.attention(q, k, v, bias=rng.random((5, 7)) < 0.5), "bias", "mask")


def test_complex_input_lost_its_imaginary_part(rng):
    q, k, v = qkv(rng)
    expect_dtype_error(lambda: multihead.attention(q.astype(np.complex64), k, v), "q")
    expect_dtype_error(lambda: multihead.attention(q, k, v, alibi_slopes=np.ones(4, np.complex128)), "alibi_slopes")


def test_float_or_wrapping_seqlens_were_silently_converted(rng):
    q, k, v = qkv(rng)
    expect_dtype_error(lambda: multihead.attention(q, k, v, seqlens_k=np.array([3.7, 7.0])), "seqlens_k", "integer")
    with pytest.raises(multihead.Error) as info:
        multihead.attention(q, k, v, seqlens_k=np.array([2**32 + 3, 7], np.int64))  # wrapped to 3
    assert (info.value.tensor, info.value.dim, info.value.got) == ("seqlens_k", "value", str(2**32 + 3))
    # In range, any integer dtype is read exactly.
    got = multihead.attention(q, k, v, seqlens_k=np.array([3, 7], np.uint64))
    assert np.array_equal(got, multihead.attention(q, k, v, seqlens_k=np.array([3, 7], np.int32)))


@pytest.mark.parametrize("shape", [(2, 4, 5, 7), (5, 7), (4, 1, 7), (1, 1, 1, 7), (2, 1, 5, 1), (7,)])
def test_bias(rng, shape):
    bias = rand(rng, *shape)
    check(*qkv(rng), rng, bias=bias)


def test_bias_masks_at_lowest(rng):
    bias = rand(rng, 2, 4, 5, 7)
    bias[0, :, 1, 2:5] = -np.inf
    bias[1, 2, :, 0] = np.finfo(np.float32).min
    bias[1, 3, 4, :] = -np.inf  # one fully masked row
    check(*qkv(rng), rng, bias=bias)


def test_bias_broadcast_view(rng):
    """A stride-0 view (np.broadcast_to) is read in place; its gradient has its shape."""
    bias = np.broadcast_to(rand(rng, 1, 1, 5, 7), (2, 4, 5, 7))
    *_, grads = check(*qkv(rng), rng, bias=bias)
    assert grads[3].shape == (2, 4, 5, 7)


def test_key_padding(rng):
    check(*qkv(rng, B=3, Lk=7), rng, seqlens_k=np.array([7, 3, 0]), causal="bottom_right")


def test_key_padding_with_window(rng):
    check(*qkv(rng, B=2, Lq=4, Lk=9), rng, seqlens_k=np.array([5, 9], np.int32), window=(2, 1))


@pytest.mark.parametrize("causal", [None, "top_left", "bottom_right"])
def test_alibi(rng, causal):
    slopes = np.array([0.5, 0.25, 0.125, 0.0625], np.float32)
    check(*qkv(rng, Lq=5, Lk=8), rng, alibi_slopes=slopes, causal=causal)


def test_softcap(rng):
    q, k, v = qkv(rng)
    check(3 * q, 3 * k, v, rng, softcap=2.0)
    check(q, k, v, rng, softcap=30.0, causal="top_left", bias=rand(rng, 5, 7))


def test_sinks(rng):
    sinks = rand(rng, 4)
    mask = rng.random((2, 4, 5, 7)) < 0.6
    mask[1, 0, 3] = False  # a fully masked row stays masked with sinks
    check(*qkv(rng), rng, sinks=sinks, mask=mask)


def test_everything_composed(rng):
    q, k, v = qkv(rng, B=2, Lq=6, Lk=10, H=6, Hkv=2, D=12, Dv=7)
    check(q, k, v, rng, scale=0.3, causal="bottom_right", window=(4, 1), mask=rng.random((6, 10)) < 0.8,
          bias=rand(rng, 6, 1, 10), seqlens_k=np.array([10, 8]), alibi_slopes=np.linspace(0.1, 0.6, 6),
          softcap=4.0, sinks=rand(rng, 6))


def varlen_case(rng, H=4, Hkv=2, D=8, Dv=6):
    cu_q = np.array([0, 3, 3, 8, 9], np.int32)
    cu_k = np.array([0, 4, 6, 6, 12], np.int32)
    q = rand(rng, cu_q[-1], H, D)
    k = rand(rng, cu_k[-1], Hkv, D)
    v = rand(rng, cu_k[-1], Hkv, Dv)
    return q, k, v, cu_q, cu_k


@pytest.mark.parametrize("opts", [
    dict(), dict(causal="bottom_right"), dict(causal="top_left", window=(1, -1)),
    dict(alibi_slopes=np.array([0.5, 0.25, 0.1, 0.05]), softcap=3.0), dict(sinks=np.ones(4, np.float32)),
])
def test_varlen(rng, opts):
    q, k, v, cu_q, cu_k = varlen_case(rng)
    out, lse = multihead.attention_varlen(q, k, v, cu_q, cu_k, return_lse=True, **opts)
    ref_out, ref_lse = oracle.varlen_forward(q, k, v, cu_q, cu_k, **opts)
    assert out.shape == (9, 4, 6) and lse.shape == (4, 9)
    assert_close(out, ref_out, FWD_TOL, "out")
    assert_close(lse, ref_lse, FWD_TOL, "lse")

    dout = rand(rng, *out.shape)
    grads = multihead.attention_varlen_backward(dout, q, k, v, out, lse, cu_q, cu_k, **opts)
    ref = oracle.varlen_backward(dout, q, k, v, cu_q, cu_k, **opts)
    for name, got, want in zip(("dq", "dk", "dv", "dbias", "dsinks"), grads, ref):
        if want is None:
            assert got is None
        else:
            assert_close(got, want, BWD_TOL, name)


def test_varlen_matches_batched(rng):
    """Equal-length packed sequences give the batched results."""
    q, k, v = qkv(rng, B=3, Lq=4, Lk=6)
    cu_q, cu_k = np.arange(4) * 4, np.arange(4) * 6
    out = multihead.attention_varlen(q.reshape(12, 4, 8), k.reshape(18, 4, 8), v.reshape(18, 4, 8), cu_q, cu_k,
                                     causal="bottom_right")
    ref = multihead.attention(q, k, v, causal="bottom_right")
    np.testing.assert_allclose(out.reshape(ref.shape), ref, rtol=0, atol=1e-6)


def test_return_tuples(rng):
    q, k, v = qkv(rng)
    out = multihead.attention(q, k, v)
    assert isinstance(out, np.ndarray) and out.shape == (2, 5, 4, 8)
    out_l, lse = multihead.attention(q, k, v, return_lse=True)
    out_p, probs = multihead.attention(q, k, v, return_probs=True)
    out_lp, lse2, probs2 = multihead.attention(q, k, v, return_lse=True, return_probs=True)
    assert lse.shape == (2, 4, 5) and probs.shape == (2, 4, 5, 7)
    # Asking for statistics does not change a bit of the output.
    for other in (out_l, out_p, out_lp):
        assert np.array_equal(out.view(np.uint32), other.view(np.uint32))
    assert np.array_equal(lse, lse2) and np.array_equal(probs, probs2)


def test_fully_masked_rows(rng):
    q, k, v = qkv(rng)
    mask = np.ones((2, 4, 5, 7), bool)
    mask[0, 1, 2] = False
    mask[1, :, 4] = False
    out, lse, probs, grads = check(q, k, v, rng, mask=mask, sinks=rand(rng, 4), bias=rand(rng, 5, 7))
    assert np.all(out[0, 2, 1] == 0) and np.all(out[1, 4] == 0)
    assert lse[0, 1, 2] == -np.inf and np.all(lse[1, :, 4] == -np.inf)
    assert np.all(probs[0, 1, 2] == 0)
    assert np.all(grads[0][0, 2, 1] == 0) and np.all(grads[0][1, 4] == 0)
    for g in grads:
        assert not np.isnan(g).any()


def test_no_keys(rng):
    """Lk = 0: every row fully masked; out 0, lse -inf, gradients 0, no NaN."""
    q, k, v = qkv(rng, Lk=0)
    out, lse, probs, grads = check(q, k, v, rng, causal="bottom_right")
    assert np.all(out == 0) and np.all(lse == -np.inf) and probs.shape == (2, 4, 5, 0)
    assert np.all(grads[0] == 0)


@pytest.mark.parametrize("shape", [dict(B=0), dict(Lq=0)])
def test_empty(rng, shape):
    q, k, v = qkv(rng, **shape)
    out, lse = multihead.attention(q, k, v, return_lse=True)
    assert out.shape == (q.shape[0], q.shape[1], 4, 8) and lse.shape == (q.shape[0], 4, q.shape[1])
    dq, dk, dv, _, _ = multihead.attention_backward(np.zeros_like(out), q, k, v, out, lse)
    assert dq.shape == q.shape and dk.shape == k.shape and np.all(dk == 0) and np.all(dv == 0)


def test_strided_inputs(rng):
    """Transposed, sliced, reversed, Fortran-ordered and float64 inputs give the results
    of their contiguous float32 copies, and are left unchanged."""
    B, Lq, Lk, H, D = 2, 5, 7, 4, 8
    q = rand(rng, B, H, Lq, D).transpose(0, 2, 1, 3)          # heads-first memory
    k = rand(rng, B, 2 * Lk, H, D)[:, ::2]                      # every other key
    v = rand(rng, B, Lk, H, D)[:, ::-1]                         # negative stride: copied
    q_nc = rand(rng, B, Lq, H, 2 * D)[..., ::2]                 # non-contiguous last dim: copied
    k_f = np.asfortranarray(rand(rng, B, Lk, H, D))
    v_64 = rand(rng, B, Lk, H, D).astype(np.float64)            # converted
    mask = (rng.random((Lk, 2 * Lq)) < 0.7).T[::2]              # transposed, sliced
    bias = rand(rng, 3 * Lk, Lq).T[:, ::3]
    opts = dict(causal="bottom_right", mask=mask, bias=bias)
    for a, b, c in [(q, k, v), (q_nc, k_f, v_64), (q, k_f, v)]:
        saved = [x.copy() for x in (a, b, c)]
        dense = [np.ascontiguousarray(x, np.float32) for x in (a, b, c)]
        out, lse = multihead.attention(a, b, c, return_lse=True, **opts)
        want, want_lse = multihead.attention(*dense, return_lse=True, **opts)
        assert np.array_equal(out, want) and np.array_equal(lse, want_lse)
        dout = rand(rng, *out.shape)
        dout_t = np.asfortranarray(dout)
        got_g = multihead.attention_backward(dout_t, a, b, c, out, lse, **opts)
        want_g = multihead.attention_backward(dout, *dense, want, want_lse, **opts)
        for g, w in zip(got_g, want_g):
            assert np.array_equal(g, w)
        for x, s in zip((a, b, c), saved):
            assert np.array_equal(x, s)
        check(a, b, c, rng, **opts)


def test_strided_float32_is_not_copied(rng):
    """float32 views with usable strides are read in place (numpy's allocations are
    traced by tracemalloc; a copy of k would show up in the peak), other dtypes are
    converted."""
    big = rand(rng, 1, 2 * 100_000, 1, 16)
    k = big[:, ::2]                                   # 6.4 MB, every other row
    v = np.broadcast_to(rand(rng, 1, 1, 1, 1), (1, 100_000, 1, 1))
    q = rand(rng, 1, 1, 1, 16)
    tracemalloc.start()
    try:
        multihead.attention(q, k, v)
        _, peak_view = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        multihead.attention(q, k.astype(np.float16), v)
        _, peak_converted = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_view < 100_000 < k.nbytes <= peak_converted, (peak_view, peak_converted)


def test_readonly_inputs(rng):
    q, k, v = qkv(rng)
    for t in (q, k, v):
        t.flags.writeable = False
    check(q, k, v, rng)


def test_bf16(rng):
    q, k, v = qkv(rng, Lq=9, Lk=17, H=4, Hkv=2, D=16)
    check(q, k, v, rng, tol_fwd=BF16_TOL, tol_bwd=BF16_TOL, dtype="bfloat16", causal="bottom_right")
    check(q, k, v, rng, tol_fwd=BF16_TOL, tol_bwd=BF16_TOL, dtype="bfloat16", mask=rng.random((9, 17)) < 0.6,
          sinks=rand(rng, 4))


def test_bf16_rounds_inputs(rng):
    """1 + 2^-10 is not a bf16 value: the bf16 path sees 1.0, the fp32 path does not.
    One key, so P = 1 exactly and the bf16 kernel's rounding of P (to feed its bf16 dot
    products) cannot blur the 2^-10 difference."""
    q, k, _ = qkv(rng, Lk=1)
    v = np.full((2, 1, 4, 8), 1 + 2.0**-10, np.float32)
    np.testing.assert_allclose(multihead.attention(q, k, v, dtype="bfloat16"), 1.0, rtol=0, atol=1e-5)
    np.testing.assert_allclose(multihead.attention(q, k, v), 1 + 2.0**-10, rtol=0, atol=1e-5)


def test_f16(rng):
    q, k, v = qkv(rng)
    check(q, k, v, rng, tol_fwd=5e-3, tol_bwd=5e-3, dtype="float16", causal="top_left")


def test_threads_deterministic(rng):
    q, k, v = qkv(rng, B=3, Lq=70, Lk=90, H=4, Hkv=2, D=32)
    opts = dict(causal="bottom_right", bias=rand(rng, 70, 90), sinks=rand(rng, 4))
    dout = rand(rng, 3, 70, 4, 32)
    results = []
    default = multihead.get_num_threads()
    assert default >= 1
    try:
        for n in (1, 2, 1):
            multihead.set_num_threads(n)
            assert multihead.get_num_threads() == n
            out, lse = multihead.attention(q, k, v, return_lse=True, **opts)
            grads = multihead.attention_backward(dout, q, k, v, out, lse, **opts)
            results.append([out, lse, *grads[:4]])
    finally:
        multihead.set_num_threads(0)
    assert multihead.get_num_threads() == default
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert a.tobytes() == b.tobytes()


def assert_error(kind, tensor, fn, *args, **kwargs):
    with pytest.raises(ValueError) as info:
        fn(*args, **kwargs)
    e = info.value
    assert isinstance(e, multihead.Error)
    assert (e.kind, e.tensor) == (kind, tensor), str(e)
    msg = str(e)
    assert msg.startswith(f"{kind}: {tensor}") and e.dim in msg and "expected" in msg and "got" in msg, msg
    return e


def test_errors(rng):
    q, k, v = qkv(rng)
    attn = multihead.attention
    assert_error("InvalidShape", "q", attn, q[0], k, v)                       # rank
    assert_error("InvalidShape", "k", attn, q, rand(rng, 2, 7, 3, 8), rand(rng, 2, 7, 3, 8))  # H % Hkv
    assert_error("InvalidShape", "k", attn, q, rand(rng, 2, 7, 4, 9), v)      # head dim
    assert_error("InvalidShape", "v", attn, q, k, rand(rng, 2, 6, 4, 8))      # Lk
    assert_error("InvalidMask", "mask", attn, q, k, v, mask=np.ones((3, 7), bool))
    assert_error("InvalidMask", "bias", attn, q, k, v, bias=rand(rng, 5, 6))
    assert_error("InvalidArgument", "options.scale", attn, q, k, v, scale=float("nan"))
    assert_error("InvalidArgument", "options.scale", attn, q, k, v, scale=0.0)
    assert_error("InvalidArgument", "options.softcap", attn, q, k, v, softcap=-1.0)
    assert_error("InvalidArgument", "options.causal", attn, q, k, v, causal="left")
    assert_error("InvalidArgument", "options.causal", attn, q, k, v, causal=True)
    assert_error("InvalidArgument", "options.window", attn, q, k, v, window=3)
    assert_error("InvalidArgument", "options.window", attn, q, k, v, window=(-2, 0))
    assert_error("InvalidArgument", "dtype", attn, q, k, v, dtype="int8")
    assert_error("InvalidArgument", "q", attn, "not an array", k, v)
    assert_error("InvalidShape", "q", attn, q[None, None], k, v)              # rank 6
    e = assert_error("InvalidShape", "k", attn, q, rand(rng, 2, 7, 3, 8), rand(rng, 2, 7, 3, 8))
    assert e.dim and e.expected and e.got
    with pytest.raises(TypeError):
        attn(q, k, v, "top_left")  # options are keyword-only


def test_errors_options(rng):
    q, k, v = qkv(rng, B=2)
    attn = multihead.attention
    with pytest.raises(ValueError, match="seqlens_k"):
        attn(q, k, v, seqlens_k=np.array([7, 8]))
    with pytest.raises(ValueError, match="seqlens_k"):
        attn(q, k, v, seqlens_k=np.array([7]))
    with pytest.raises(ValueError, match="alibi_slopes"):
        attn(q, k, v, alibi_slopes=np.ones(3))
    with pytest.raises(ValueError, match="sinks"):
        attn(q, k, v, sinks=np.ones(5))


def test_errors_backward(rng):
    q, k, v = qkv(rng)
    out, lse = multihead.attention(q, k, v, return_lse=True)
    bwd = multihead.attention_backward
    with pytest.raises(ValueError, match="dout"):
        bwd(out[:, :4], q, k, v, out, lse)
    with pytest.raises(ValueError, match="lse"):
        bwd(out, q, k, v, out, lse[:, :3])


def test_errors_varlen(rng):
    q, k, v, cu_q, cu_k = varlen_case(rng)
    vl = multihead.attention_varlen
    assert_error("InvalidShape", "q", vl, q[None], k, v, cu_q, cu_k)
    with pytest.raises(ValueError, match="cu_seqlens_q"):
        vl(q, k, v, np.array([0, 5, 3, 8, 9]), cu_k)
    with pytest.raises(ValueError, match="cu_seqlens_k"):
        vl(q, k, v, cu_q, np.array([0, 4, 6, 6, 11]))
    assert_error("Unsupported", "mask", vl, q, k, v, cu_q, cu_k, mask=np.ones((9, 12), bool))
    assert_error("Unsupported", "probs", vl, q, k, v, cu_q, cu_k, return_probs=True)
    assert_error("InvalidArgument", "cu_seqlens_q", vl, q, k, v, None, cu_k)
    out = np.zeros((9, 4, 6), np.float32)
    assert_error("InvalidShape", "lse", multihead.attention_varlen_backward, out, q, k, v, out,
                 np.zeros((4, 9, 1), np.float32), cu_q, cu_k)


def random_case(rng):
    """One random composition of options on small odd shapes."""
    Hkv = int(rng.choice([1, 2, 3]))
    H = Hkv * int(rng.choice([1, 2]))
    B, Lq, Lk = int(rng.integers(1, 3)), int(rng.integers(1, 12)), int(rng.integers(0, 14))
    D, Dv = int(rng.integers(1, 20)), int(rng.integers(1, 20))
    q, k, v = qkv(rng, B=B, Lq=Lq, Lk=Lk, H=H, Hkv=Hkv, D=D, Dv=Dv)
    opts = {}
    if rng.random() < 0.5:
        opts["causal"] = str(rng.choice(["top_left", "bottom_right"]))
    if rng.random() < 0.3:
        opts["window"] = (int(rng.integers(-1, 5)), int(rng.integers(-1, 5)))
    if rng.random() < 0.3:
        opts["mask"] = rng.random((B, 1, Lq, Lk)) < 0.8
    if rng.random() < 0.3:
        opts["bias"] = rand(rng, H, Lq, Lk)
    if rng.random() < 0.3:
        opts["seqlens_k"] = rng.integers(0, Lk + 1, B)
    if rng.random() < 0.3:
        opts["alibi_slopes"] = rng.random(H).astype(np.float32)
    if rng.random() < 0.3:
        opts["softcap"] = float(rng.uniform(1, 10))
    if rng.random() < 0.3:
        opts["sinks"] = rand(rng, H)
    if rng.random() < 0.3:
        opts["scale"] = float(rng.uniform(0.05, 1))
    return q, k, v, opts


def test_random_compositions():
    seed = int(os.environ.get("MULTIHEAD_PY_SEED", np.random.SeedSequence().entropy % 2**32))
    print(f"\nMULTIHEAD_PY_SEED={seed}")
    rng = np.random.default_rng(seed)
    for case in range(200):
        q, k, v, opts = random_case(rng)
        try:
            check(q, k, v, rng, **opts)
        except AssertionError as e:
            raise AssertionError(f"seed {seed} case {case}: shapes {q.shape} {k.shape} {v.shape}, "
                                 f"options {sorted(opts)}: {e}") from None


def test_return_stats_matches_probs(rng):
    """Streaming per-head statistics equal entropy, max and argmax of the exact probabilities."""
    q, k, v = qkv(rng, Lq=9, Lk=33, H=4, Hkv=2, D=16)
    out, probs, stats = multihead.attention(q, k, v, causal="bottom_right", return_probs=True,
                                            return_stats=True)
    assert stats.shape == (2, 4, 9, 3)
    p = probs.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log(p), 0.0).sum(-1)
    np.testing.assert_allclose(stats[..., 0], entropy, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats[..., 1], p.max(-1), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(stats[..., 2], p.argmax(-1))
    np.testing.assert_array_equal(out, multihead.attention(q, k, v, causal="bottom_right"))
