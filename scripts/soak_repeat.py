"""Runs one mixed workload many times and compares every result byte for byte with the first
run: forward and backward with every option family, GQA, bf16, varlen, decode over the KV
cache (f32, bf16, int8, forks), the module's forward and backward, on 1 and 2 threads.

    PYTHONPATH=build/release/python /usr/bin/python3 scripts/soak_repeat.py [REPEATS]

Prints one line per repeat that differs (naming the result) and exits 1 if any did.
"""
import sys

import numpy as np

import multihead as mh


def workload():
    """Every result of one pass, as (name, bytes), from fixed seeds."""
    rng = np.random.default_rng(2026)
    results = []

    def r(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    q, k, v = r(2, 70, 4, 32), r(2, 90, 2, 32), r(2, 90, 2, 32)
    dout = r(2, 70, 4, 32)
    mask = rng.random((2, 1, 70, 90)) > 0.2
    variants = {
        "plain": {},
        "causal": {"causal": "bottom_right"},
        "window": {"causal": "bottom_right", "window": (16, 0)},
        "mask": {"mask": mask},
        "bias": {"bias": r(2, 4, 70, 90)},
        "alibi_softcap": {"alibi_slopes": np.abs(r(4)), "softcap": 20.0},
        "sinks": {"sinks": r(4)},
        "padding": {"seqlens_k": np.array([90, 41], np.int32)},
        "bf16": {"dtype": "bfloat16"},
    }
    for name, options in variants.items():
        out, lse = mh.attention(q, k, v, return_lse=True, **options)
        grads = mh.attention_backward(dout, q, k, v, out, lse, **options)
        results.append((name + ".out", out.tobytes()))
        results.append((name + ".lse", lse.tobytes()))
        for g_name, g in zip(("dq", "dk", "dv", "dbias", "dsinks"), grads):
            if g is not None:
                results.append((name + "." + g_name, g.tobytes()))

    # Decode over the cache: appends, a fork, mixed lengths.
    for dtype in ("float32", "bfloat16", "int8"):
        cache = mh.KVCache(2, 32, capacity=4096, dtype=dtype)
        a, b = cache.new_sequence(), cache.new_sequence()
        cache.append(a, r(700, 2, 32), r(700, 2, 32))
        cache.append(b, r(1300, 2, 32), r(1300, 2, 32))
        c = cache.fork(a)
        cache.append(c, r(5, 2, 32), r(5, 2, 32))
        for step in range(3):
            out = mh.attention_cached(r(3, 1, 4, 32), cache, [a, b, c], k_new=r(3, 1, 2, 32),
                                      v_new=r(3, 1, 2, 32), rotary_dim=16)
            results.append(("cached.%s.%d" % (dtype, step), out.tobytes()))

    module = mh.MultiHeadAttention(64, 4, num_kv_heads=2, seed=7)
    x = r(2, 50, 64)
    results.append(("module.forward", module.forward(x, causal="top_left").tobytes()))
    return results


def main():
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    reference = None
    differing = 0
    for repeat in range(repeats):
        mh.set_num_threads(1 + repeat % 2)
        results = workload()
        if reference is None:
            reference = results
            continue
        for (name, got), (_, want) in zip(results, reference):
            if got != want:
                print("repeat %d (%d threads): %s differs" % (repeat, 1 + repeat % 2, name))
                differing += 1
    mh.set_num_threads(0)
    print("%d repeats of %d results: %s" % (repeats, len(reference), "all identical" if differing == 0 else
                                            "%d differing" % differing))
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
