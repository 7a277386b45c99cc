"""multihead.KVCache from Python: a random walk of operations against a plain model
(rows per sequence, quantized as the cache must), failing calls that change nothing,
capacity to the token, copy-on-write sharing, and strict dtypes (no silent conversion)."""

import numpy as np
import pytest

import multihead


def bf16_round(x):
    """float32 -> bfloat16 (round to nearest even) -> float32, finite inputs."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16 << 16
    return u.astype(np.uint32).view(np.float32).reshape(np.shape(x))


def int8_round(x):
    """Per (token, head) row: scale = max|x| / 127 (float32), q = rint(x / scale)."""
    x = np.asarray(x, dtype=np.float32)
    maxabs = np.abs(x).max(axis=-1, keepdims=True).astype(np.float64)
    scale = (maxabs / 127.0).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(scale > 0, np.clip(np.rint(x.astype(np.float64) / scale.astype(np.float64)), -127, 127), 0)
    q = q.astype(np.int8)  # no -0
    return (scale * q.astype(np.float32)).astype(np.float32), scale, q


EXPECT = {"float32": lambda x: np.asarray(x, np.float32), "bfloat16": bf16_round,
          "int8": lambda x: int8_round(x)[0]}


def snapshot(cache, ids):
    state = [cache.num_free_blocks(), cache.used_tokens(), cache.num_sequences()]
    for i in ids:
        k, v = cache.gather(i)
        state.append((i, cache.length(i), cache.block_table(i).tobytes(), k.tobytes(), v.tobytes()))
    return state


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8"])
@pytest.mark.parametrize("seed", range(6))
def test_random_operations_match_model(dtype, seed):
    rng = np.random.default_rng(seed)
    hkv, d, dv = int(rng.integers(1, 4)), int(rng.integers(1, 7)), int(rng.integers(1, 7))
    bs = int(2 ** rng.integers(0, 5))
    cache = multihead.KVCache(hkv, d, v_head_dim=dv, capacity=int(rng.integers(1, 10)) * bs, block_size=bs,
                              dtype=dtype)
    assert cache.capacity() % bs == 0
    model = {}  # id -> (k rows, v rows) as lists of (hkv, d) arrays
    for step in range(120):
        ctx = f"seed {seed} step {step}"
        op = rng.integers(0, 100) if model else 0
        ids = list(model)
        if op < 10:
            model[cache.new_sequence()] = ([], [])
        elif op < 60:
            i = ids[rng.integers(0, len(ids))]
            n = int(rng.integers(0, 2 * bs + 3))
            k = (rng.standard_normal((n, hkv, d)) * np.exp(rng.uniform(-3, 3))).astype(np.float32)
            v = (rng.standard_normal((n, hkv, dv)) * np.exp(rng.uniform(-3, 3))).astype(np.float32)
            before = snapshot(cache, ids)
            try:
                cache.append(i, k, v)
            except multihead.Error as e:
                assert e.kind == "CapacityExceeded", ctx
                assert snapshot(cache, ids) == before, ctx
            else:
                model[i][0].extend(EXPECT[dtype](k))
                model[i][1].extend(EXPECT[dtype](v))
        elif op < 75:
            i = ids[rng.integers(0, len(ids))]
            n = int(rng.integers(0, cache.length(i) + 1))
            cache.truncate(i, n)
            del model[i][0][n:], model[i][1][n:]
        elif op < 88:
            i = ids[rng.integers(0, len(ids))]
            model[cache.fork(i)] = (list(model[i][0]), list(model[i][1]))
        elif op < 98:
            i = ids[rng.integers(0, len(ids))]
            cache.release(i)
            del model[i]
        else:
            cache.reset()
            model.clear()
        for i, (ks, vs) in model.items():
            k, v = cache.gather(i)
            assert k.shape == (len(ks), hkv, d) and v.shape == (len(vs), hkv, dv), ctx
            if ks:
                np.testing.assert_array_equal(k, np.stack(ks), err_msg=ctx)
                np.testing.assert_array_equal(v, np.stack(vs), err_msg=ctx)
        assert cache.used_tokens() == sum(len(ks) for ks, _ in model.values()), ctx


def test_fill_to_capacity_then_one_more_token():
    cache = multihead.KVCache(2, 4, capacity=50, block_size=16)
    assert cache.capacity() == 64  # rounded up to whole blocks
    a = cache.new_sequence()
    cache.append(a, np.ones((64, 2, 4), np.float32), np.ones((64, 2, 4), np.float32))
    assert cache.num_free_blocks() == 0 and cache.used_tokens() == 64
    before = snapshot(cache, [a])
    with pytest.raises(multihead.Error) as info:
        cache.append(a, np.ones((1, 2, 4), np.float32), np.ones((1, 2, 4), np.float32))
    assert info.value.kind == "CapacityExceeded"
    assert snapshot(cache, [a]) == before


def test_fork_is_copy_on_write_and_shares_full_blocks():
    rng = np.random.default_rng(1)
    cache = multihead.KVCache(1, 8, capacity=64, block_size=4, dtype="bfloat16")
    p = cache.new_sequence()
    cache.append(p, rng.standard_normal((6, 1, 8), dtype=np.float32), rng.standard_normal((6, 1, 8), dtype=np.float32))
    pk, pv = cache.gather(p)
    free = cache.num_free_blocks()
    c = cache.fork(p)
    assert cache.num_free_blocks() == free  # nothing copied
    cache.append(c, rng.standard_normal((9, 1, 8), dtype=np.float32), rng.standard_normal((9, 1, 8), dtype=np.float32))
    k, v = cache.gather(p)
    np.testing.assert_array_equal(k, pk)
    np.testing.assert_array_equal(v, pv)
    assert cache.block_table(c)[0] == cache.block_table(p)[0]  # the full block stays shared
    assert cache.block_table(c)[1] != cache.block_table(p)[1]  # the partial one was copied
    np.testing.assert_array_equal(cache.gather(c)[0][:6], pk)


def test_int8_error_is_at_most_half_a_scale():
    rng = np.random.default_rng(2)
    cache = multihead.KVCache(4, 64, capacity=128, dtype="int8")
    s = cache.new_sequence()
    k = (rng.standard_normal((30, 4, 64)) * rng.uniform(0.01, 100, (30, 4, 1))).astype(np.float32)
    k[3, 1] = 0  # an all-zero row reads back as zeros
    cache.append(s, k, k)
    got, _ = cache.gather(s)
    scale = np.abs(k).max(axis=-1, keepdims=True).astype(np.float64) / 127
    assert np.all(np.abs(got.astype(np.float64) - k) <= scale / 2 * (1 + 1e-6) + np.abs(k) * 2.0**-24)
    assert not got[3, 1].any()
    bad = k[:2].copy()
    bad[1, 2, 5] = np.nan
    with pytest.raises(multihead.Error) as info:
        cache.append(s, k[:2], bad)
    assert info.value.tensor == "v" and "token 1" in info.value.dim
    assert cache.length(s) == 30


def test_float_caches_keep_nan_and_inf():
    for dtype in ("float32", "bfloat16"):
        cache = multihead.KVCache(1, 3, dtype=dtype, capacity=16)
        s = cache.new_sequence()
        k = np.array([[[np.nan, np.inf, -np.inf]]], np.float32)
        cache.append(s, k, k)
        got, _ = cache.gather(s)
        assert np.isnan(got[0, 0, 0]) and got[0, 0, 1] == np.inf and got[0, 0, 2] == -np.inf


def test_bad_inputs_are_typed_errors_and_change_nothing():
    cache = multihead.KVCache(2, 4, v_head_dim=3, capacity=32, block_size=8)
    s = cache.new_sequence()
    cache.append(s, np.zeros((3, 2, 4), np.float32), np.zeros((3, 2, 3), np.float32))
    before = snapshot(cache, [s])
    k, v = np.zeros((1, 2, 4), np.float32), np.zeros((1, 2, 3), np.float32)
    cases = [
        (lambda: cache.append(s, k.astype(np.float64), v), "InvalidArgument", "k", "dtype"),
        (lambda: cache.append(s, k, v.astype(np.complex64)), "InvalidArgument", "v", "dtype"),
        (lambda: cache.append(s, k.tolist(), v), "InvalidArgument", "k", "dtype"),
        (lambda: cache.append(s, k.astype(">f4"), v), "InvalidArgument", "k", "dtype"),
        (lambda: cache.append(s, np.zeros((1, 2, 5), np.float32), v), "InvalidShape", "k", "dim 2 (D)"),
        (lambda: cache.append(s, k, np.zeros((2, 2, 3), np.float32)), "InvalidShape", "v", "dim 0 (n)"),
        (lambda: cache.append(s, np.zeros((2, 4), np.float32), v), "InvalidShape", "k", "rank"),
        (lambda: cache.append(s + 100, k, v), "InvalidArgument", "id", ""),
        (lambda: cache.truncate(s, 4), "InvalidArgument", "n", ""),
        (lambda: cache.gather(s + 100), "InvalidArgument", "id", ""),
    ]
    for call, kind, tensor, dim in cases:
        with pytest.raises(multihead.Error) as info:
            call()
        e = info.value
        assert (e.kind, e.tensor, e.dim) == (kind, tensor, dim), str(e)
        assert snapshot(cache, [s]) == before
    for kwargs in ({"block_size": 3}, {"block_size": 512}, {"capacity": 0}, {"dtype": "float16"}):
        with pytest.raises(multihead.Error):
            multihead.KVCache(2, 4, **kwargs)
    # Strided float32 views are read in place; zero tokens is a no-op.
    big = np.arange(2 * 2 * 8, dtype=np.float32).reshape(2, 2, 8)
    cache.append(s, big[:, :, ::2], np.ascontiguousarray(big[:, :, :3]))
    np.testing.assert_array_equal(cache.gather(s)[0][3:], big[:, :, ::2])
    cache.append(s, np.zeros((0, 2, 4), np.float32), np.zeros((0, 2, 3), np.float32))
    assert cache.length(s) == 5
