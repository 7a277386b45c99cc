"""multihead.MultiHeadAttention against torch.nn.MultiheadAttention (Debian's torch 1.13):
the same weights (moved over with state_dict) and inputs, torch in float64 with autograd.
Compared: outputs, attention weights averaged and per head, input gradients, parameter
gradients, for batch_first True and False, self- and cross-attention, kdim/vdim, bias off,
add_bias_kv, add_zero_attn, key_padding_mask, bool and float attn_mask (2-D and 3-D) and
causal masks.

PyTorch's masks say True = ignore; ours say True = may attend. The translation happens
here, at the boundary (translate()), never inside the library. torch 1.13 has no
is_causal argument (it came with 2.0): a causal mask reaches it as attn_mask, which is
compared with our causal="top_left", alone and combined with other masks."""

import zlib

import numpy as np
import pytest

import multihead

TOL = 1e-5       # float32 module vs float64 torch, relative to the largest magnitude (>= 1)
GRAD_TOL = 3e-5  # gradients sum over more float32 products
BF16_TOL = 2e-2  # bf16 weights and attention inputs: a few bf16 ulps (2^-8)


@pytest.fixture
def torch():
    # Skipped per test, not per module: a module-level skip collects no test and pytest
    # then exits 5, which ctest would count as a failure.
    return pytest.importorskip("torch")


@pytest.fixture
def rng(request):
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


def assert_close(got, ref, tol, what):
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape}, expected {ref.shape}"
    assert np.isfinite(got).all(), f"{what}: not finite"
    assert np.isfinite(ref).all(), f"{what}: torch gave non-finite values"
    magnitude = max(1.0, float(np.abs(ref).max(initial=0)))
    err = float(np.abs(got - ref).max(initial=0))
    assert err <= tol * magnitude, f"{what}: max error {err:.3g} > {tol:g} * {magnitude:.3g}"


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def make_pair(torch, E, H, seed=0, batch_first=True, **kw):
    """A torch module (float64 afterwards) and ours with its weights. torch initialises
    biases to zero: they are randomised so that the bias paths are exercised."""
    torch.manual_seed(seed)
    t = torch.nn.MultiheadAttention(E, H, batch_first=batch_first, **kw)
    with torch.no_grad():
        for name, p in t.named_parameters():
            if "bias" in name:
                p.normal_()
    m = multihead.MultiHeadAttention(E, H, **kw)
    m.load_state_dict({k: v.detach().numpy() for k, v in t.state_dict().items()})
    return t.double(), m


def translate(B, H, Lq, Lk, key_padding_mask=None, attn_mask=None):
    """torch's key_padding_mask (B, Lk) and attn_mask ((Lq, Lk) or (B·H, Lq, Lk), bool
    True = ignore, or float additive) as our mask (True = may attend) and bias."""
    ours = {}
    keep = np.ones((1, 1, 1, 1), bool)
    if key_padding_mask is not None:
        keep = keep & ~key_padding_mask[:, None, None, :]
    if attn_mask is not None:
        a = attn_mask if attn_mask.ndim == 2 else attn_mask.reshape(B, H, Lq, Lk)
        if a.dtype == bool:
            keep = keep & ~a
        else:
            ours["bias"] = a
    if key_padding_mask is not None or (attn_mask is not None and attn_mask.dtype == bool):
        ours["mask"] = keep
    return ours


def run_torch(torch, t, q, k, v, dout, batch_first, need_weights=True, average=True,
              key_padding_mask=None, attn_mask=None):
    """out, weights, dquery, dkey, dvalue (None for self-attention), {name: grad}; inputs,
    outputs and gradients batch-first float64 numpy (transposed here when torch is not)."""
    def to_torch(x):
        x = x if batch_first else np.swapaxes(x, 0, 1)
        return torch.tensor(np.ascontiguousarray(x), dtype=torch.float64, requires_grad=True)

    def from_torch(x):
        x = x.detach().numpy()
        return x if batch_first else np.swapaxes(x, 0, 1)

    tq = to_torch(q)
    tk, tv = (tq, tq) if k is None else (to_torch(k), to_torch(v))
    masks = {}
    if key_padding_mask is not None:
        kpm = key_padding_mask
        masks["key_padding_mask"] = torch.from_numpy(kpm if kpm.dtype == bool else kpm.astype(np.float64))
    if attn_mask is not None:
        masks["attn_mask"] = torch.from_numpy(attn_mask if attn_mask.dtype == bool else attn_mask.astype(np.float64))
    t.zero_grad(set_to_none=True)
    out, weights = t(tq, tk, tv, need_weights=need_weights, average_attn_weights=average, **masks)
    out.backward(to_torch(dout).detach())
    grads = {name: p.grad.numpy() for name, p in t.named_parameters()}
    weights = None if weights is None else weights.detach().numpy()
    dk, dv = (None, None) if k is None else (from_torch(tk.grad), from_torch(tv.grad))
    return from_torch(out), weights, from_torch(tq.grad), dk, dv, grads


def compare(torch, rng, *, B=2, Lq=5, Lk=None, E=16, H=4, cross=False, batch_first=True,
            average=True, key_padding_mask=None, attn_mask=None, ours=None, tol=TOL,
            grad_tol=GRAD_TOL, **kw):
    """One forward and backward of both; `ours` overrides the translated mask options."""
    Lk = Lq if Lk is None else Lk
    t, m = make_pair(torch, E, H, batch_first=batch_first, **kw)
    # torch's native layout; batch_first=False hands us transposed (strided) views.
    def native(*shape_bf):
        x = rand(rng, *shape_bf)
        return x if batch_first else np.ascontiguousarray(np.swapaxes(x, 0, 1)).swapaxes(0, 1)

    q = native(B, Lq, E)
    k = native(B, Lk, kw.get("kdim") or E) if cross else None
    v = native(B, Lk, kw.get("vdim") or E) if cross else None
    dout = rand(rng, B, Lq, E)
    ref = run_torch(torch, t, q, k, v, dout, batch_first, average=average,
                    key_padding_mask=key_padding_mask, attn_mask=attn_mask)
    opts = translate(B, H, Lq, Lk, key_padding_mask, attn_mask) if ours is None else ours

    out, weights = m.forward(q, k, v, need_weights=True, average_weights=average, **opts)
    dq, dk, dv = m.backward(dout)
    assert_close(out, ref[0], tol, "out")
    assert_close(weights, ref[1], tol, "weights")
    assert_close(dq, ref[2], grad_tol, "dquery")
    if cross:
        assert_close(dk, ref[3], grad_tol, "dkey")
        assert_close(dv, ref[4], grad_tol, "dvalue")
    else:
        assert dk is None and dv is None
    grads = m.grads()
    assert set(grads) == set(ref[5]), f"parameter names {sorted(grads)} vs torch {sorted(ref[5])}"
    for name, g in ref[5].items():
        assert_close(grads[name], g, grad_tol, f"grad {name}")
    return m, out, weights


# --- projections, layouts, self/cross ------------------------------------------------

@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("average", [True, False])
def test_self_attention(torch, rng, batch_first, average):
    compare(torch, rng, batch_first=batch_first, average=average)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("lq,lk", [(5, 9), (9, 3), (1, 1)])
def test_cross_attention(torch, rng, batch_first, lq, lk):
    compare(torch, rng, Lq=lq, Lk=lk, cross=True, batch_first=batch_first, average=False)


@pytest.mark.parametrize("batch_first", [True, False])
def test_kdim_vdim(torch, rng, batch_first):
    compare(torch, rng, Lq=4, Lk=7, cross=True, kdim=5, vdim=11, batch_first=batch_first)
    compare(torch, rng, Lq=4, Lk=7, cross=True, kdim=16, vdim=3, batch_first=batch_first, average=False)


@pytest.mark.parametrize("cross", [False, True])
def test_no_bias(torch, rng, cross):
    compare(torch, rng, Lk=6, cross=cross, bias=False, average=False)


@pytest.mark.parametrize("shape", [(1, 1, 4, 1), (3, 6, 24, 2), (2, 13, 64, 8), (1, 33, 8, 8)])
def test_shapes(torch, rng, shape):
    B, L, E, H = shape
    compare(torch, rng, B=B, Lq=L, E=E, H=H, average=False)


# --- appended keys ---------------------------------------------------------------------

@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("batch_first", [True, False])
def test_add_bias_kv(torch, rng, cross, batch_first):
    _, _, weights = compare(torch, rng, Lk=6, cross=cross, add_bias_kv=True, batch_first=batch_first)
    assert weights.shape == (2, 5, (6 if cross else 5) + 1)  # the learned key counts


@pytest.mark.parametrize("cross", [False, True])
def test_add_zero_attn(torch, rng, cross):
    _, _, weights = compare(torch, rng, Lk=6, cross=cross, add_zero_attn=True, average=False)
    assert weights.shape == (2, 4, 5, (6 if cross else 5) + 1)


def test_add_bias_kv_and_zero_attn(torch, rng):
    compare(torch, rng, Lk=6, cross=True, kdim=7, vdim=3, add_bias_kv=True, add_zero_attn=True,
            average=False)


def test_appended_keys_with_masks(torch, rng):
    # torch pads both masks with "attend" columns for the appended keys; ours are given
    # over the input keys only and the module lets every query see the appended ones.
    B, Lq, Lk, H = 2, 5, 6, 4
    kpm = rng.random((B, Lk)) < 0.3
    attn = rng.random((Lq, Lk)) < 0.4
    kpm[:, 0] = False
    attn[:, 0] = False
    compare(torch, rng, B=B, Lq=Lq, Lk=Lk, H=H, cross=True, add_bias_kv=True, add_zero_attn=True,
            key_padding_mask=kpm, attn_mask=attn, average=False)


# --- masks -----------------------------------------------------------------------------

def live_rows(rng, shape, p):
    """A random torch-polarity mask (True = ignore) whose rows each keep one key."""
    ignore = rng.random(shape) < p
    ignore[..., rng.integers(shape[-1])] = False
    return ignore


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("cross", [False, True])
def test_key_padding_mask(torch, rng, batch_first, cross):
    kpm = live_rows(rng, (3, 7), 0.5)
    compare(torch, rng, B=3, Lq=7 if not cross else 4, Lk=7, cross=cross, batch_first=batch_first,
            key_padding_mask=kpm, average=False)


def test_float_key_padding_mask(torch, rng):
    # torch 1.13 also takes an additive float key_padding_mask: our bias over (B, 1, 1, Lk).
    kpm = rand(rng, 3, 7)
    kpm[0, 2] = -np.inf
    compare(torch, rng, B=3, Lq=4, Lk=7, cross=True, key_padding_mask=kpm,
            ours={"bias": kpm[:, None, None, :]}, average=False)


def test_key_padding_mask_as_seqlens_k(torch, rng):
    # Suffix padding, the usual case, is our seqlens_k.
    lengths = np.array([7, 3, 1], np.int32)
    kpm = np.arange(7)[None, :] >= lengths[:, None]
    compare(torch, rng, B=3, Lq=4, Lk=7, cross=True, key_padding_mask=kpm, ours={"seqlens_k": lengths})


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("batch_first", [True, False])
def test_bool_attn_mask(torch, rng, dims, batch_first):
    B, H, Lq, Lk = 2, 4, 5, 6
    attn = live_rows(rng, (Lq, Lk) if dims == 2 else (B * H, Lq, Lk), 0.5)
    compare(torch, rng, B=B, H=H, Lq=Lq, Lk=Lk, cross=True, batch_first=batch_first, attn_mask=attn,
            average=False)


@pytest.mark.parametrize("dims", [2, 3])
def test_float_attn_mask(torch, rng, dims):
    B, H, Lq, Lk = 2, 4, 5, 6
    add = rand(rng, *((Lq, Lk) if dims == 2 else (B * H, Lq, Lk)))
    add[live_rows(rng, add.shape, 0.3)] = -np.inf  # -inf masks in both
    compare(torch, rng, B=B, H=H, Lq=Lq, Lk=Lk, cross=True, attn_mask=add, average=False)


def test_float_attn_mask_with_key_padding(torch, rng):
    B, H, L = 3, 2, 6
    add = rand(rng, L, L)
    kpm = live_rows(rng, (B, L), 0.4)
    compare(torch, rng, B=B, H=H, Lq=L, key_padding_mask=kpm, attn_mask=add)


def test_bool_attn_mask_with_key_padding(torch, rng):
    B, H, L = 3, 2, 6
    attn = live_rows(rng, (B * H, L, L), 0.3)
    kpm = np.zeros((B, L), bool)
    kpm[:, -2:] = True
    attn[..., 0] = False  # every row keeps a key that padding does not remove
    compare(torch, rng, B=B, H=H, Lq=L, key_padding_mask=kpm, attn_mask=attn, average=False)


def causal_float_mask(L):
    """What torch.nn.Transformer.generate_square_subsequent_mask gives: -inf above the
    diagonal, 0 elsewhere."""
    return np.triu(np.full((L, L), -np.inf, np.float32), 1)


@pytest.mark.parametrize("batch_first", [True, False])
def test_causal(torch, rng, batch_first):
    L = 7
    compare(torch, rng, Lq=L, batch_first=batch_first, attn_mask=causal_float_mask(L),
            ours={"causal": "top_left"}, average=False)
    # The bool form of the same mask.
    compare(torch, rng, Lq=L, batch_first=batch_first, attn_mask=np.triu(np.ones((L, L), bool), 1),
            ours={"causal": "top_left"})


def test_causal_with_masks(torch, rng):
    # torch 1.13 takes causality only as attn_mask: the causal mask and the other mask are
    # merged there; ours keep causal separate from the key padding and the extra bias.
    B, H, L = 3, 4, 6
    kpm = live_rows(rng, (B, L), 0.4)
    kpm[:, 0] = False  # the first key is every query's causal key
    compare(torch, rng, B=B, H=H, Lq=L, key_padding_mask=kpm, attn_mask=causal_float_mask(L),
            ours={"causal": "top_left", "mask": ~kpm[:, None, None, :]}, average=False)
    add = rand(rng, B * H, L, L)
    compare(torch, rng, B=B, H=H, Lq=L, attn_mask=add + causal_float_mask(L),
            ours={"causal": "top_left", "bias": add.reshape(B, H, L, L)}, average=False)
    lengths = np.array([6, 2, 4], np.int32)
    kpm = np.arange(L)[None, :] >= lengths[:, None]
    compare(torch, rng, B=B, H=H, Lq=L, key_padding_mask=kpm, attn_mask=causal_float_mask(L),
            ours={"causal": "top_left", "seqlens_k": lengths})


def test_is_causal(torch, rng):
    """torch 1.13's MultiheadAttention.forward has no is_causal (a hint added in 2.0 that
    needs the causal attn_mask as well): the causal cases above pass the mask alone. On a
    torch that has it, the hint with its mask must give what our causal="top_left" gives."""
    import inspect
    if "is_causal" not in inspect.signature(torch.nn.MultiheadAttention.forward).parameters:
        t = torch.nn.MultiheadAttention(8, 2, batch_first=True)
        x = torch.zeros(1, 3, 8)
        with pytest.raises(TypeError):
            t(x, x, x, attn_mask=torch.from_numpy(causal_float_mask(3)), is_causal=True)
        return
    L, E = 6, 16
    t, m = make_pair(torch, E, 4)
    x = rand(rng, 2, L, E)
    with torch.no_grad():
        xt = torch.tensor(x, dtype=torch.float64)
        ref, _ = t(xt, xt, xt, attn_mask=torch.from_numpy(causal_float_mask(L).astype(np.float64)), is_causal=True)
    assert_close(m.forward(x, causal="top_left"), ref.numpy(), TOL, "out")


def test_fully_masked_rows_are_zero_where_torch_gives_nan(torch, rng):
    """torch 1.13 returns NaN for a query that may attend no key; we define the attention
    output of such a row as 0 (docs/CONTRACT.md), so the module's output is out_proj.bias
    there, its weights are 0, and every gradient stays finite."""
    B, H, Lq, Lk, E = 2, 4, 5, 6, 16
    t, m = make_pair(torch, E, H)
    q, k, v = rand(rng, B, Lq, E), rand(rng, B, Lk, E), rand(rng, B, Lk, E)
    kpm = np.zeros((B, Lk), bool)
    kpm[1] = True                     # batch 1: every key padded
    attn = np.zeros((Lq, Lk), bool)
    attn[2] = True                    # query 2: every key disallowed
    dead = np.zeros((B, Lq), bool)
    dead[1] = True
    dead[:, 2] = True

    with torch.no_grad():
        ref_out, ref_w = t(*(torch.tensor(x, dtype=torch.float64) for x in (q, k, v)),
                           key_padding_mask=torch.from_numpy(kpm), attn_mask=torch.from_numpy(attn),
                           average_attn_weights=False)
    ref_out, ref_w = ref_out.numpy(), ref_w.numpy()
    assert np.isnan(ref_out[dead]).all() and np.isnan(ref_w.transpose(0, 2, 1, 3)[dead]).all()
    assert np.isfinite(ref_out[~dead]).all()

    out, w = m.forward(q, k, v, need_weights=True, average_weights=False,
                       **translate(B, H, Lq, Lk, key_padding_mask=kpm, attn_mask=attn))
    bias_o = m.state_dict()["out_proj.bias"]
    np.testing.assert_array_equal(out[dead], np.broadcast_to(bias_o, out[dead].shape))
    np.testing.assert_array_equal(w.transpose(0, 2, 1, 3)[dead], 0.0)
    assert_close(out[~dead], ref_out[~dead], TOL, "out (live rows)")
    assert_close(w.transpose(0, 2, 1, 3)[~dead], ref_w.transpose(0, 2, 1, 3)[~dead], TOL, "weights (live rows)")

    grads = m.backward(rand(rng, B, Lq, E))
    for g in list(grads) + list(m.grads().values()):
        assert np.isfinite(g).all()
    # A dead query row gets no gradient through attention: its only path is the output bias.
    np.testing.assert_array_equal(grads[0][dead], 0.0)


# --- weights in and out ----------------------------------------------------------------

CONFIGS = [dict(), dict(kdim=5, vdim=7), dict(bias=False), dict(add_bias_kv=True),
           dict(add_zero_attn=True), dict(kdim=5, vdim=7, bias=False, add_bias_kv=True)]


@pytest.mark.parametrize("kw", CONFIGS)
def test_state_dict_names_are_torchs(torch, kw):
    t = torch.nn.MultiheadAttention(16, 4, batch_first=True, **kw)
    m = multihead.MultiHeadAttention(16, 4, **kw)
    ours, theirs = m.state_dict(), t.state_dict()
    assert sorted(ours) == sorted(theirs)
    for name in theirs:
        assert ours[name].shape == tuple(theirs[name].shape), name
    assert sorted(m.parameters()) == sorted(n for n, _ in t.named_parameters())
    assert m.num_parameters() == sum(p.numel() for p in t.parameters())


@pytest.mark.parametrize("kw", CONFIGS)
def test_weights_move_both_ways(torch, rng, kw):
    """torch -> ours with the documented one-liner, and ours -> torch: same outputs."""
    torch.manual_seed(1)
    t = torch.nn.MultiheadAttention(16, 4, batch_first=True, **kw)
    m = multihead.MultiHeadAttention(16, 4, seed=7, **kw)
    m.load_state_dict({k: v.detach().numpy() for k, v in t.state_dict().items()})
    for name, value in t.state_dict().items():
        np.testing.assert_array_equal(m.state_dict()[name], value.numpy(), err_msg=name)

    fresh = multihead.MultiHeadAttention(16, 4, seed=9, **kw)
    t.load_state_dict({k: torch.from_numpy(v) for k, v in fresh.state_dict().items()})
    q = rand(rng, 2, 5, 16)
    k = rand(rng, 2, 3, kw.get("kdim", 16))
    v = rand(rng, 2, 3, kw.get("vdim", 16))
    with torch.no_grad():
        ref, _ = t.double()(*(torch.tensor(x, dtype=torch.float64) for x in (q, k, v)))
    assert_close(fresh.forward(q, k, v), ref.numpy(), TOL, "out")


def test_bf16_weights(torch, rng):
    """bf16 weights: the module rounds torch's float32 weights to bf16 on load; compared
    with torch computing in float64 with the same rounded weights."""
    E, H, B, L = 32, 4, 2, 9
    torch.manual_seed(3)
    t = torch.nn.MultiheadAttention(E, H, batch_first=True)
    with torch.no_grad():
        for name, p in t.named_parameters():
            if "bias" in name:
                p.normal_()
    m = multihead.MultiHeadAttention(E, H, dtype="bfloat16")
    m.load_state_dict({k: v.detach().numpy() for k, v in t.state_dict().items()})
    assert m.config["dtype"] == "bfloat16"
    rounded = m.state_dict()
    for name, value in t.state_dict().items():
        np.testing.assert_array_equal(rounded[name], round_bf16(value.numpy()), err_msg=name)
    t.load_state_dict({k: torch.from_numpy(v) for k, v in rounded.items()})
    t = t.double()

    x, dout = rand(rng, B, L, E), rand(rng, B, L, E)
    ref = run_torch(torch, t, x, None, None, dout, True, average=False)
    out, w = m.forward(x, need_weights=True, average_weights=False)
    dx, _, _ = m.backward(dout)
    assert_close(out, ref[0], BF16_TOL, "out")
    assert_close(w, ref[1], BF16_TOL, "weights")
    assert_close(dx, ref[2], BF16_TOL, "dquery")
    for name, g in ref[5].items():
        assert_close(m.grads()[name], g, BF16_TOL, f"grad {name}")


def round_bf16(x):
    """float32 -> nearest-even bfloat16, returned as float32 (finite inputs)."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32).reshape(np.shape(x))


def test_training_loop_matches(torch, rng):
    """Three SGD steps on both, gradients from backward, weights updated by name: the
    parameter-gradient API is enough to train, and grads accumulate like torch's."""
    E, H = 16, 2
    t, m = make_pair(torch, E, H, add_bias_kv=True)
    lr = 0.1
    for step in range(3):
        x, dout = rand(rng, 2, 4, E), rand(rng, 2, 4, E)
        ref = run_torch(torch, t, x, None, None, dout, True)
        m.zero_grad()
        m.forward(x)
        m.backward(dout)
        grads = m.grads()
        for name, g in ref[5].items():
            assert_close(grads[name], g, GRAD_TOL * (step + 1), f"step {step} grad {name}")
        with torch.no_grad():
            for name, p in t.named_parameters():
                p -= lr * p.grad
        m.load_state_dict({name: value - lr * grads[name] for name, value in m.parameters().items()})
