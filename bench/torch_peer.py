#!/usr/bin/python3
"""PyTorch peer for `multihead bench`: times the same cases in PyTorch in its best
configuration on this machine and prints one JSON object on stdout.

Usage: torch_peer.py SPEC_JSON
  SPEC_JSON = {"threads": N, "repeats": R (0 = by budget), "max_repeats": M,
               "budget_s": S, "cases": [{"id", "kind": "attention"|"module", ...}]}
  attention: B, Lq, Lk, H, Hkv, D, causal ("none"|"top_left"|"bottom_right"),
             dtype ("float32"|"bfloat16"), backward (bool), evict (bool)
  module:    B, L, E, heads, causal (bool)

Best configuration (set by the caller's environment, reported back): OpenBLAS as
libblas.so.3 with OPENBLAS_CORETYPE=SkylakeX, ATEN_CPU_CAPABILITY=avx512, the caller's
thread count, and glibc malloc keeping freed memory (MALLOC_MMAP_MAX_=0,
MALLOC_TRIM_THRESHOLD_) so that large tensors are not faulted in afresh on every call. PyTorch 1.13 has no scaled_dot_product_attention (2.0+), so attention is
the explicit matmul -> softmax -> matmul on (B, H, L, D) tensors, which is how 1.13's
nn.MultiheadAttention computes it too; GQA uses a grouped view of Q, (B, Hkv, G*Lq, D),
instead of repeat_interleave on K/V.
"""
import json
import os
import statistics
import sys
import time


def loaded_blas():
    """Paths of the BLAS/LAPACK libraries mapped into this process."""
    paths = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split()[-1]
            name = os.path.basename(path)
            if "blas" in name or "lapack" in name or "mkl" in name or "blis" in name:
                paths.add(path)
    return sorted(paths)


def openblas_config(paths):
    import ctypes
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
            get = lib.openblas_get_config
        except (OSError, AttributeError):
            continue
        get.restype = ctypes.c_char_p
        return get().decode()
    return ""


def time_calls(fn, spec, evict=None):
    """Warm-up, then repeats; returns per-call milliseconds."""
    warm_t0 = time.perf_counter()
    warm = 0
    while warm < 2 or (warm < 10 and time.perf_counter() - warm_t0 < 0.1):
        if evict:
            evict()
        t0 = time.perf_counter()
        fn()
        first = time.perf_counter() - t0
        warm += 1
    n = spec["repeats"] or max(1, min(spec["max_repeats"], int(spec["budget_s"] / max(first, 1e-9))))
    ms = []
    for _ in range(n):
        if evict:
            evict()
        t0 = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t0) * 1e3)
    return ms


def causal_mask(torch, Lq, Lk, align, rows_repeat=1):
    """Additive (rows_repeat*Lq, Lk) mask: -inf above the aligned diagonal."""
    offset = Lk - Lq if align == "bottom_right" else 0
    i = torch.arange(Lq).unsqueeze(1)
    j = torch.arange(Lk).unsqueeze(0)
    mask = torch.zeros(Lq, Lk).masked_fill(j > i + offset, float("-inf"))
    return mask.repeat(rows_repeat, 1)


def attention_case(torch, c, spec):
    dtype = getattr(torch, c["dtype"])
    B, Lq, Lk, H, Hkv, D = c["B"], c["Lq"], c["Lk"], c["H"], c["Hkv"], c["D"]
    G = H // Hkv
    scale = D ** -0.5
    gen = torch.Generator().manual_seed(0)
    # Grouped view: the G query heads of a K/V head become G*Lq rows of one matmul.
    q = torch.randn(B, Hkv, G * Lq, D, generator=gen).to(dtype)
    k = torch.randn(B, Hkv, Lk, D, generator=gen).to(dtype)
    v = torch.randn(B, Hkv, Lk, D, generator=gen).to(dtype)
    mask = None
    if c["causal"] != "none" and not (c["causal"] == "bottom_right" and Lq == 1):
        mask = causal_mask(torch, Lq, Lk, c["causal"], G).to(dtype)

    def forward(q, k, v):
        s = torch.matmul(q * scale, k.transpose(-2, -1))
        if mask is not None:
            s = s + mask
        return torch.matmul(torch.softmax(s, dim=-1), v)

    evict = None
    if c.get("evict"):
        # As the C++ side: K/V come from DRAM, as in decode after the other layers ran.
        scratch = torch.empty(256 << 20, dtype=torch.uint8)

        def evict():
            scratch.add_(1)

    if not c["backward"]:
        with torch.inference_mode():
            return time_calls(lambda: forward(q, k, v), spec, evict)
    q.requires_grad_(True)
    k.requires_grad_(True)
    v.requires_grad_(True)
    dout = torch.randn(B, Hkv, G * Lq, D, generator=gen).to(dtype)

    def step():
        q.grad = k.grad = v.grad = None
        forward(q, k, v).backward(dout)

    return time_calls(step, spec)


def module_case(torch, c, spec):
    B, L, E = c["B"], c["L"], c["E"]
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(E, c["heads"], batch_first=True)
    x = torch.randn(B, L, E, requires_grad=True)
    dout = torch.randn(B, L, E)
    mask = causal_mask(torch, L, L, "top_left") if c["causal"] else None

    def step():
        x.grad = None
        mha.zero_grad(set_to_none=True)
        out, _ = mha(x, x, x, attn_mask=mask, need_weights=False)
        out.backward(dout)

    return time_calls(step, spec)


def main():
    spec = json.loads(sys.argv[1])
    result = {"available": False}
    try:
        import torch
    except ImportError as e:
        result["error"] = "torch not importable: %s" % e
        print(json.dumps(result))
        return
    torch.set_num_threads(spec["threads"])
    blas = loaded_blas()
    result.update({
        "available": True,
        "version": torch.__version__,
        "threads": torch.get_num_threads(),
        "blas": blas,
        "openblas_config": openblas_config(blas),
        "env": {k: os.environ.get(k, "") for k in ("OPENBLAS_CORETYPE", "ATEN_CPU_CAPABILITY", "MALLOC_MMAP_MAX_",
                                                     "MALLOC_TRIM_THRESHOLD_")},
        "build_blas": [line.strip() for line in torch.__config__.show().splitlines() if "BLAS" in line],
        "cases": {},
    })
    for c in spec["cases"]:
        try:
            fn = module_case if c["kind"] == "module" else attention_case
            ms = fn(torch, c, spec)
            result["cases"][c["id"]] = {"median_ms": statistics.median(ms), "min_ms": min(ms),
                                        "max_ms": max(ms), "repeats": len(ms)}
        except Exception as e:  # one failing case must not hide the others
            result["cases"][c["id"]] = {"error": "%s: %s" % (type(e).__name__, e)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
