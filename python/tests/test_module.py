"""multihead.MultiHeadAttention without PyTorch: against a float64 numpy composition
(projections here, attention by oracle.py), for what torch.nn.MultiheadAttention cannot
express (GQA/MQA, free head_dim, v_head_dim, out_dim, ALiBi, windows, softcap, sinks);
plus dropout determinism, initialisation, parameter counts, weights in and out
(safetensors files, prefixes, both namings) and errors."""

import json
import struct
import zlib

import numpy as np
import pytest

import multihead
import oracle

TOL = 1e-5
GRAD_TOL = 3e-5


@pytest.fixture
def rng(request):
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def assert_close(got, ref, tol, what):
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape}, expected {ref.shape}"
    assert np.isfinite(got).all(), f"{what}: not finite"
    magnitude = max(1.0, float(np.abs(ref).max(initial=0)))
    err = float(np.abs(got - ref).max(initial=0))
    assert err <= tol * magnitude, f"{what}: max error {err:.3g} > {tol:g} * {magnitude:.3g}"


def randomize(m, rng):
    """Random weights and biases (initial biases are zero), through load_state_dict."""
    m.load_state_dict({n: rand(rng, *v.shape) * 0.3 for n, v in m.state_dict(names="llama").items()})


def compose(m, query, key, value, dout, **opts):
    """The module's math in float64 from its Llama-named weights: projections here, the
    attention by the oracle. Returns out, per-head probs, (dquery, dkey, dvalue), and
    the parameter gradients under Llama names."""
    c = m.config
    w = {n: v.astype(np.float64) for n, v in m.state_dict(names="llama").items()}
    H, Hkv, d, dv = c["num_heads"], c["num_kv_heads"], c["head_dim"], c["v_head_dim"]
    self_attn = key is None
    xq = query.astype(np.float64)
    xk = xq if self_attn else key.astype(np.float64)
    xv = xq if self_attn else value.astype(np.float64)
    B, Lq, Lk = xq.shape[0], xq.shape[1], xk.shape[1]

    def proj(x, name):
        y = x @ w[name + ".weight"].T
        return y + w[name + ".bias"] if name + ".bias" in w else y

    Q = proj(xq, "q_proj").reshape(B, Lq, H, d)
    K = proj(xk, "k_proj").reshape(B, Lk, Hkv, d)
    V = proj(xv, "v_proj").reshape(B, Lk, Hkv, dv)
    O, _, P = oracle.forward(Q, K, V, **opts)
    O = O.reshape(B, Lq, H * dv)
    out = proj(O, "o_proj")

    g = {}
    dout = dout.astype(np.float64)
    g["o_proj.weight"] = np.einsum("blo,bli->oi", dout, O)
    dO = (dout @ w["o_proj.weight"]).reshape(B, Lq, H, dv)
    dQ, dK, dV, _, _ = oracle.backward(dO, Q, K, V, **opts)
    dx = {}
    for name, dY, x in (("q_proj", dQ, xq), ("k_proj", dK, xk), ("v_proj", dV, xv)):
        dY = dY.reshape(dY.shape[0], dY.shape[1], -1)
        g[name + ".weight"] = np.einsum("blo,bli->oi", dY, x)
        dx[name] = dY @ w[name + ".weight"]
    if "o_proj.bias" in w:
        g["o_proj.bias"] = dout.sum(axis=(0, 1))
        for name, dY in (("q_proj", dQ), ("k_proj", dK), ("v_proj", dV)):
            g[name + ".bias"] = dY.reshape(B, dY.shape[1], -1).sum(axis=(0, 1))
    if self_attn:
        grads_in = (dx["q_proj"] + dx["k_proj"] + dx["v_proj"], None, None)
    else:
        grads_in = (dx["q_proj"], dx["k_proj"], dx["v_proj"])
    return out, P, grads_in, g


def llama_grads(m):
    """The module's parameter gradients under Llama names (a round trip through a
    scratch module that loads them as weights)."""
    scratch = multihead.MultiHeadAttention(**module_kwargs(m))
    scratch.load_state_dict(m.grads())
    return scratch.state_dict(names="llama")


def module_kwargs(m):
    c = dict(m.config)
    return {k: c[k] for k in ("embed_dim", "num_heads", "num_kv_heads", "head_dim", "v_head_dim", "kdim",
                              "vdim", "out_dim", "bias", "add_bias_kv", "add_zero_attn", "dtype")}


def check(rng, cfg, B=2, Lq=5, Lk=None, cross=False, **opts):
    m = multihead.MultiHeadAttention(**cfg)
    randomize(m, rng)
    c = m.config
    Lk = Lq if Lk is None else Lk
    q = rand(rng, B, Lq, c["embed_dim"])
    k = rand(rng, B, Lk, c["kdim"]) if cross else None
    v = rand(rng, B, Lk, c["vdim"]) if cross else None
    dout = rand(rng, B, Lq, c["out_dim"])
    ref_out, ref_p, ref_in, ref_g = compose(m, q, k, v, dout, **opts)

    out, w = m.forward(q, k, v, need_weights=True, average_weights=False, **opts)
    assert_close(out, ref_out, TOL, "out")
    assert_close(w, ref_p, TOL, "per-head weights")
    out2, w_avg = m.forward(q, k, v, need_weights=True, **opts)
    np.testing.assert_array_equal(out2, out)  # asking for weights does not change out
    assert_close(w_avg, ref_p.mean(axis=1), TOL, "averaged weights")
    got_in = m.backward(dout)
    for name, got, want in zip(("dquery", "dkey", "dvalue"), got_in, ref_in):
        if want is None:
            assert got is None, name
        else:
            assert_close(got, want, GRAD_TOL, name)
    got_g = llama_grads(m)
    assert sorted(got_g) == sorted(ref_g)
    for name, want in ref_g.items():
        assert_close(got_g[name], want, GRAD_TOL, f"grad {name}")
    return m


# --- the math beyond torch's module ---------------------------------------------------

@pytest.mark.parametrize("H,Hkv", [(8, 2), (4, 1), (6, 3), (4, 4)])
@pytest.mark.parametrize("cross", [False, True])
def test_gqa(rng, H, Hkv, cross):
    check(rng, dict(embed_dim=24, num_heads=H, num_kv_heads=Hkv), Lk=7, cross=cross)


@pytest.mark.parametrize("cfg", [
    dict(embed_dim=16, num_heads=4, head_dim=6),                      # H·d != E
    dict(embed_dim=16, num_heads=2, head_dim=8, v_head_dim=5),
    dict(embed_dim=16, num_heads=4, out_dim=9),
    dict(embed_dim=12, num_heads=4, num_kv_heads=2, head_dim=5, v_head_dim=7, kdim=3, vdim=10, out_dim=6),
    dict(embed_dim=12, num_heads=3, bias=False, num_kv_heads=1),
])
def test_free_dims(rng, cfg):
    check(rng, cfg, Lk=6, cross="kdim" in cfg)
    if "kdim" not in cfg:
        check(rng, cfg)


@pytest.mark.parametrize("opts", [
    dict(causal="top_left"), dict(causal="bottom_right"), dict(window=(2, 0)),
    dict(window=(1, 1), causal="bottom_right"), dict(softcap=2.0),
])
def test_options(rng, opts):
    check(rng, dict(embed_dim=16, num_heads=4, num_kv_heads=2), Lq=6, Lk=9, cross=True, **opts)


def test_alibi_sinks_bias_mask(rng):
    H, B, Lq, Lk = 4, 2, 5, 7
    mask = rng.random((B, 1, Lq, Lk)) < 0.7
    mask[..., 0] = True
    check(rng, dict(embed_dim=16, num_heads=H, num_kv_heads=2), B=B, Lq=Lq, Lk=Lk, cross=True,
          alibi_slopes=np.linspace(0.1, 0.8, H).astype(np.float32), sinks=rand(rng, H),
          bias=rand(rng, 1, H, Lq, Lk), mask=mask, seqlens_k=np.array([7, 4], np.int32))


def test_fully_masked_rows(rng):
    # Queries 1 and 3 see no key: attention output 0 there, gradients finite.
    check(rng, dict(embed_dim=8, num_heads=2), Lq=4, Lk=4, cross=True,
          mask=np.array([True, False, True, False])[None, None, :, None])


# --- dropout -------------------------------------------------------------------------

def test_dropout_is_deterministic_given_the_seed(rng):
    cfg = dict(embed_dim=16, num_heads=4, dropout=0.5)
    a = multihead.MultiHeadAttention(**cfg, seed=11)
    b = multihead.MultiHeadAttention(**cfg, seed=11)
    c = multihead.MultiHeadAttention(**cfg, seed=12)
    c.load_state_dict(a.state_dict())  # same weights, other dropout stream
    plain = multihead.MultiHeadAttention(embed_dim=16, num_heads=4)
    plain.load_state_dict(a.state_dict())
    x = rand(rng, 2, 9, 16)
    ya, yb = a.forward(x, training=True), b.forward(x, training=True)
    np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(ya, c.forward(x, training=True))
    # training=False ignores dropout: the module without dropout, bit for bit.
    y_eval = a.forward(x)
    np.testing.assert_array_equal(y_eval, plain.forward(x))
    assert not np.array_equal(ya, y_eval)
    # Gradients in training mode are deterministic too.
    dout = rand(rng, 2, 9, 16)
    ya2 = a.forward(x, training=True)
    np.testing.assert_array_equal(ya2, b.forward(x, training=True))
    assert not np.array_equal(ya2, ya)  # a new pattern per training call, as in torch
    np.testing.assert_array_equal(a.backward(dout)[0], b.backward(dout)[0])


def test_dropout_backward_uses_the_forward_pattern(rng):
    """Central differences of sum(out · dout) along a random direction, each side from a
    fresh module with the same seed (so the same first dropout pattern), against
    backward: the gradient drops exactly what the forward dropped."""
    cfg = dict(embed_dim=16, num_heads=4, dropout=0.3, seed=21)
    x, dx, dout = rand(rng, 2, 7, 16), rand(rng, 2, 7, 16), rand(rng, 2, 7, 16)
    eps = 1e-2

    def loss(point):
        out = multihead.MultiHeadAttention(**cfg).forward(point, training=True)
        return float((out.astype(np.float64) * dout).sum())

    numeric = (loss(x + eps * dx) - loss(x - eps * dx)) / (2 * eps)
    m = multihead.MultiHeadAttention(**cfg)
    m.forward(x, training=True)
    analytic = float((m.backward(dout)[0].astype(np.float64) * dx).sum())
    plain = multihead.MultiHeadAttention(**cfg)
    plain.forward(x)
    without_dropout = float((plain.backward(dout)[0].astype(np.float64) * dx).sum())
    assert abs(numeric - analytic) <= 1e-2 * max(1.0, abs(analytic)), (numeric, analytic)
    assert abs(without_dropout - analytic) > 0.1 * abs(analytic)  # dropout did matter


def test_dropout_zero_in_training_changes_nothing(rng):
    m = multihead.MultiHeadAttention(16, 4)
    x = rand(rng, 2, 5, 16)
    np.testing.assert_array_equal(m.forward(x, training=True), m.forward(x))


# --- configuration, parameters, initialisation ---------------------------------------

def test_config_defaults():
    c = multihead.MultiHeadAttention(64, 8).config
    assert c == dict(embed_dim=64, num_heads=8, num_kv_heads=8, head_dim=8, v_head_dim=8, kdim=64, vdim=64,
                     out_dim=64, bias=True, add_bias_kv=False, add_zero_attn=False, dropout=0.0, seed=0,
                     dtype="float32", rotary_dim=0, rotary_base=10000.0, rotary_interleaved=False)


def test_parameter_count_does_not_depend_on_num_heads():
    """At fixed embed_dim with num_heads · head_dim == embed_dim, more heads split the same
    projections: 4·E² weights + 4·E biases, whatever num_heads is."""
    E = 48
    counts = {H: multihead.MultiHeadAttention(E, H).num_parameters() for H in (1, 2, 3, 4, 6, 8, 12, 16, 48)}
    assert set(counts.values()) == {4 * E * E + 4 * E}, counts
    # GQA is what shrinks it: K and V get Hkv·d rows.
    gqa = multihead.MultiHeadAttention(E, 8, num_kv_heads=2).num_parameters()
    assert gqa == 2 * E * E + 2 * (E * E // 4) + 2 * E + 2 * (E // 4)


def test_parameters_and_grads():
    m = multihead.MultiHeadAttention(16, 4, add_bias_kv=True)
    params, grads = m.parameters(), m.grads()
    assert list(params) == list(grads)
    assert sum(p.size for p in params.values()) == m.num_parameters()
    for name in params:
        assert params[name].dtype == grads[name].dtype == np.float32
        assert params[name].shape == grads[name].shape
        assert not grads[name].any(), name
    params["in_proj_weight"][:] = 0  # copies: the module is untouched
    assert m.parameters()["in_proj_weight"].any()


def test_grads_accumulate_and_zero_grad(rng):
    m = multihead.MultiHeadAttention(16, 4)
    x, dout = rand(rng, 2, 5, 16), rand(rng, 2, 5, 16)
    m.forward(x)
    m.backward(dout)
    once = m.grads()
    m.forward(x)
    m.backward(dout)
    for name, g in m.grads().items():
        np.testing.assert_allclose(g, 2 * once[name], rtol=1e-6, atol=1e-6, err_msg=name)
    m.zero_grad()
    assert not any(g.any() for g in m.grads().values())


def test_initialisation_like_pytorch():
    E = 32
    m = multihead.MultiHeadAttention(E, 4, add_bias_kv=True, seed=5)
    p = m.parameters()
    w = p["in_proj_weight"]
    bound = np.sqrt(6.0 / (w.shape[0] + w.shape[1]))  # xavier_uniform_ on the (3E, E) matrix
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    assert abs(float(w.mean())) < 0.1 * bound
    assert not p["in_proj_bias"].any() and not p["out_proj.bias"].any()
    assert p["out_proj.weight"].any() and p["bias_k"].any() and p["bias_v"].any()
    # From the seed: the same seed the same weights, another seed others.
    same = multihead.MultiHeadAttention(E, 4, add_bias_kv=True, seed=5).parameters()
    other = multihead.MultiHeadAttention(E, 4, add_bias_kv=True, seed=6).parameters()
    for name in p:
        np.testing.assert_array_equal(p[name], same[name])
    assert not np.array_equal(p["in_proj_weight"], other["in_proj_weight"])


# --- inputs --------------------------------------------------------------------------

def test_strided_and_converted_inputs(rng):
    m = multihead.MultiHeadAttention(16, 4)
    randomize(m, rng)
    x = rand(rng, 3, 6, 16)
    ref = m.forward(x)
    np.testing.assert_array_equal(m.forward(np.ascontiguousarray(x.swapaxes(0, 1)).swapaxes(0, 1)), ref)
    np.testing.assert_array_equal(m.forward(x.astype(np.float64)), ref)
    wide = np.zeros((3, 6, 32), np.float32)
    wide[:, :, ::2] = x  # last dim strided: copied
    np.testing.assert_array_equal(m.forward(wide[:, :, ::2]), ref)


def test_self_attention_returns_none_for_key_and_value(rng):
    m = multihead.MultiHeadAttention(8, 2)
    randomize(m, rng)
    x, dout = rand(rng, 1, 3, 8), rand(rng, 1, 3, 8)
    out = m.forward(x)
    dq, dk, dv = m.backward(dout)
    assert dq.shape == (1, 3, 8) and dk is None and dv is None
    # Passing the query itself as key and value (torch's m(x, x, x)) is self-attention too.
    np.testing.assert_array_equal(m.forward(x, x, x), out)
    dq2, dk2, dv2 = m.backward(dout)
    assert dk2 is None and dv2 is None
    np.testing.assert_array_equal(dq2, dq)
    # A copy is cross-attention: the same math, the input gradient split three ways.
    y = x.copy()
    np.testing.assert_allclose(m.forward(x, y, y), out, rtol=1e-6, atol=1e-6)
    dq3, dk3, dv3 = m.backward(dout)
    np.testing.assert_allclose(dq3 + dk3 + dv3, dq, rtol=1e-5, atol=1e-5)


def test_threads_share_a_module_safely(rng):
    """Compute runs without the GIL; calls on one module from several threads are
    serialised and give what serial calls give."""
    import threading
    m = multihead.MultiHeadAttention(32, 4)
    xs = [rand(rng, 2, 40, 32) for _ in range(8)]
    expected = [m.forward(x) for x in xs]
    got = [None] * len(xs)

    def work(n):
        got[n] = m.forward(xs[n])

    threads = [threading.Thread(target=work, args=(n,)) for n in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for n, out in enumerate(got):
        np.testing.assert_array_equal(out, expected[n])


def test_weights_shapes_with_appended_keys(rng):
    m = multihead.MultiHeadAttention(8, 2, add_bias_kv=True, add_zero_attn=True)
    q, kv = rand(rng, 2, 3, 8), rand(rng, 2, 5, 8)
    out, w = m.forward(q, kv, kv, need_weights=True)
    assert out.shape == (2, 3, 8) and w.shape == (2, 3, 7)
    _, w = m.forward(q, kv, kv, need_weights=True, average_weights=False)
    assert w.shape == (2, 2, 3, 7)
    np.testing.assert_allclose(w.sum(axis=-1), 1.0, rtol=1e-5)


# --- weights in and out --------------------------------------------------------------

def write_safetensors(path, tensors):
    """An independent writer (the format's spec, not the library's code): float32 only."""
    header, blobs, offset = {}, [], 0
    for name, value in tensors.items():
        raw = np.ascontiguousarray(value, np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(value.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


@pytest.mark.parametrize("cfg", [dict(), dict(kdim=5, vdim=7, add_bias_kv=True), dict(num_kv_heads=2, bias=False)])
@pytest.mark.parametrize("names", ["pytorch", "llama"])
def test_save_load_round_trip(tmp_path, rng, cfg, names):
    a = multihead.MultiHeadAttention(16, 4, seed=1, **cfg)
    randomize(a, rng)
    path = str(tmp_path / "mha.safetensors")
    a.save(path, names=names)
    b = multihead.MultiHeadAttention(16, 4, seed=2, **cfg)
    b.load(path)
    for name, value in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[name], value, err_msg=name)


def test_llama_names_round_trip(rng):
    a = multihead.MultiHeadAttention(16, 4, seed=1)
    randomize(a, rng)
    llama = a.state_dict(names="llama")
    assert sorted(llama) == sorted(f"{p}_proj.{w}" for p in "qkvo" for w in ("weight", "bias"))
    b = multihead.MultiHeadAttention(16, 4, seed=2)
    b.load_state_dict(llama)
    for name, value in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[name], value, err_msg=name)
    # The fused in_proj holds q, k, v in that order.
    np.testing.assert_array_equal(a.state_dict()["in_proj_weight"],
                                  np.concatenate([llama[f"{p}_proj.weight"] for p in "qkv"]))


def test_prefix_picks_one_layer(tmp_path, rng):
    layers = [multihead.MultiHeadAttention(8, 2, seed=s) for s in range(3)]
    model = {}
    for i, layer in enumerate(layers):
        model.update({f"layers.{i}.attn.{n}": v for n, v in layer.state_dict(names="llama").items()})
    model["embed.weight"] = rand(rng, 10, 8)  # outside every prefix: ignored
    path = str(tmp_path / "model.safetensors")
    write_safetensors(path, model)
    m = multihead.MultiHeadAttention(8, 2, seed=9)
    m.load(path, prefix="layers.1.attn.")
    for name, value in layers[1].state_dict().items():
        np.testing.assert_array_equal(m.state_dict()[name], value, err_msg=name)
    m2 = multihead.MultiHeadAttention(8, 2, seed=9)
    m2.load_state_dict(model, prefix="layers.2.attn.")
    np.testing.assert_array_equal(m2.state_dict()["out_proj.weight"], layers[2].state_dict()["out_proj.weight"])


def test_mismatch_lists_every_difference_and_changes_nothing(rng):
    m = multihead.MultiHeadAttention(16, 4)
    before = m.state_dict()
    bad = dict(before)
    del bad["in_proj_bias"]                          # missing
    bad["out_proj.weight"] = rand(rng, 16, 8)        # wrong shape
    bad["stray"] = rand(rng, 3)                      # unexpected
    with pytest.raises(multihead.Error) as info:
        m.load_state_dict(bad)
    e = info.value
    assert isinstance(e, ValueError) and e.kind == "ModelMismatch"
    for name in ("in_proj_bias", "out_proj.weight", "stray"):
        assert name in str(e), f"{name} not named in: {e}"
    for name, value in m.state_dict().items():
        np.testing.assert_array_equal(value, before[name])


def test_errors(rng, tmp_path):
    with pytest.raises(multihead.Error):
        multihead.MultiHeadAttention(10, 3)  # 10 % 3 with no head_dim
    with pytest.raises(multihead.Error, match="dtype"):
        multihead.MultiHeadAttention(8, 2, dtype="int8")
    m = multihead.MultiHeadAttention(8, 2)
    with pytest.raises(multihead.Error, match="query"):
        m.forward(rand(rng, 2, 3, 7))
    with pytest.raises(multihead.Error, match="key|value"):
        m.forward(rand(rng, 2, 3, 8), rand(rng, 2, 3, 8))
    with pytest.raises(multihead.Error, match="names"):
        m.state_dict(names="gguf")
    with pytest.raises(multihead.Error):
        m.load(str(tmp_path / "missing.safetensors"))
    m.forward(rand(rng, 2, 3, 8))
    with pytest.raises(multihead.Error, match="dout"):
        m.backward(rand(rng, 2, 3, 9))
    with pytest.raises(multihead.Error, match="mask"):
        m.forward(rand(rng, 2, 3, 8), mask=np.ones((5, 5), bool))


@pytest.mark.parametrize("interleaved", [False, True])
def test_rotary_generation_through_the_cache_equals_the_causal_forward(rng, interleaved):
    # Token-by-token generation through a KVCache gives the module's causal full forward
    # (rotary positions continue from each sequence's length; the rotation itself is
    # checked against rotate_half and GPT-J's form in test_rotary.py).
    E, H, Hkv, L = 32, 4, 2, 9
    m = multihead.MultiHeadAttention(E, H, num_kv_heads=Hkv, rotary_dim=6, rotary_base=100.0,
                                     rotary_interleaved=interleaved, seed=5)
    assert m.config["rotary_dim"] == 6
    x = rand(rng, 2, L, E)
    full = m.forward(x, causal="top_left")
    cache = multihead.KVCache(Hkv, E // H, capacity=64, block_size=4)
    seqs = [cache.new_sequence(), cache.new_sequence()]
    steps = [m.forward(x[:, i:i + 1], cache=cache, seqs=seqs) for i in range(L)]
    assert_close(np.concatenate(steps, axis=1), full, TOL, "generated")
    assert cache.length(seqs[0]) == L

    # The rotated queries change the scores: a module without rotary differs.
    plain = multihead.MultiHeadAttention(E, H, num_kv_heads=Hkv, seed=5)
    assert np.abs(plain.forward(x, causal="top_left") - full).max() > 1e-3


def test_cache_arguments_are_checked(rng):
    m = multihead.MultiHeadAttention(16, 4, num_kv_heads=2)
    cache = multihead.KVCache(2, 4, capacity=16)
    sid = cache.new_sequence()
    x = rand(rng, 1, 2, 16)
    for call, tensor, kind in [
            (lambda: m.forward(x, cache=cache), "seqs", "InvalidArgument"),
            (lambda: m.forward(x, seqs=[sid]), "cache", "InvalidArgument"),
            (lambda: m.forward(x, cache=multihead.KVCache(1, 4, capacity=16), seqs=[0]), "cache", "InvalidShape"),
            (lambda: multihead.MultiHeadAttention(16, 4, rotary_dim=3), "config", "InvalidArgument")]:
        with pytest.raises(multihead.Error) as info:
            call()
        assert (info.value.tensor, info.value.kind) == (tensor, kind)
    assert cache.length(sid) == 0


def test_complex_weights_were_silently_accepted(rng):
    m = multihead.MultiHeadAttention(16, 4)
    before = m.state_dict()
    weights = {n: v.astype(np.complex64) + 1j for n, v in before.items()}
    with pytest.raises(multihead.Error) as info:
        m.load_state_dict(weights)
    assert info.value.kind == "InvalidArgument" and info.value.dim == "dtype", str(info.value)
    assert all(np.array_equal(m.state_dict()[n], v) for n, v in before.items())  # nothing changed


def test_huge_embed_dim_reported_an_overflowed_negative_size():
    # MultiHeadAttention(2**62, 1) said "dim 0: expected >= 0, got -4611686018427387904"
    # (3·E overflowed); the error now names the settings as given.
    for args, kwargs in [((2**62, 1), {}), ((2**31, 1), {}), ((64, 4), {"kdim": 2**62}),
                         ((2**40, 2**20), {"head_dim": 1})]:  # the last raised a bare MemoryError
        with pytest.raises(multihead.Error) as info:
            multihead.MultiHeadAttention(*args, **kwargs)
        assert (info.value.kind, info.value.tensor, info.value.dim) == ("CapacityExceeded", "config", "parameters")
        assert "embed_dim=%d" % args[0] in str(info.value) and "-" not in info.value.got, str(info.value)


def test_out_of_range_ints_raised_binding_type_errors():
    # seed=-1 and embed_dim=2**64 raised pybind11's TypeError listing overloads.
    for kwargs, setting, got in [({"seed": -1}, "seed", "-1"), ({"seed": 2**64}, "seed", str(2**64)),
                                 ({"seed": 1.5}, "seed", "1.5"), ({"num_kv_heads": 2**64}, "num_kv_heads", str(2**64)),
                                 ({"head_dim": 0}, "head_dim", "0"), ({"rotary_dim": -2}, "rotary_dim", "-2")]:
        with pytest.raises(multihead.Error) as info:
            multihead.MultiHeadAttention(16, 4, **kwargs)
        assert (info.value.kind, info.value.tensor, info.value.dim, info.value.got) == \
            ("InvalidArgument", "config", setting, got), str(info.value)
    with pytest.raises(multihead.Error) as info:
        multihead.MultiHeadAttention(2**64, 1)
    assert (info.value.dim, info.value.got) == ("embed_dim", str(2**64))
    assert multihead.MultiHeadAttention(16, 4, seed=2**64 - 1).state_dict()  # the largest seed works
