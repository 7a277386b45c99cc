// The naive path the benchmark measures speed-ups against: plain fp32 loops with the
// scores materialized per head (Lq × Lk), as a first implementation would write them.
// Masked keys are skipped rather than computed and discarded, so the ratio is not
// flattered. Parallel over heads with the same thread count as the library.
#pragma once

#include <cstdint>
#include <vector>

namespace multihead::bench {

// A (B, L, heads, dim) f32 tensor whose heads are contiguous (stride_h = dim) and
// whose rows may be wider (stride_l >= heads·dim, e.g. a packed QKV projection).
struct HeadsView {
  float* data = nullptr;
  int64_t stride_b = 0;
  int64_t stride_l = 0;
};

struct NaiveShape {
  int64_t B = 1, Lq = 1, Lk = 1, H = 1, Hkv = 1, D = 1, Dv = 1;
  bool causal = false;  // bottom-right (query i sees keys j <= i + Lk - Lq; top-left when Lq = Lk)
  float scale = 1.0f;
};

// out (B, Lq, H, Dv) for the first `groups` (b, kv-head) pairs in b-major order (each
// with its H / Hkv query heads); groups < B·Hkv times a subset, which the caller scales.
void naive_attention_forward(const NaiveShape& s, HeadsView q, HeadsView k, HeadsView v, HeadsView out,
                             int64_t groups, int threads);

// Forward and backward together, P kept between them as a training step keeps it:
// out as above, and dq (B, Lq, H, D), dk (B, Lk, Hkv, D), dv (B, Lk, Hkv, Dv) from dout.
void naive_attention_forward_backward(const NaiveShape& s, HeadsView q, HeadsView k, HeadsView v,
                                      HeadsView out, HeadsView dout, HeadsView dq, HeadsView dk,
                                      HeadsView dv, int64_t groups, int threads);

// y (N, out) = x (N, in) · wᵀ (w: (out, in)) + b (out)
void naive_linear_forward(const float* x, const float* w, const float* b, float* y, int64_t N, int64_t in,
                          int64_t out, int threads);
// dx (N, in) = dy (N, out) · w
void naive_linear_backward_input(const float* dy, const float* w, float* dx, int64_t N, int64_t in, int64_t out,
                                 int threads);
// dw (out, in) += dyᵀ · x;  db (out) += Σ_n dy
void naive_linear_backward_weight(const float* x, const float* dy, float* dw, float* db, int64_t N, int64_t in,
                                  int64_t out, int threads);

// Self-attention module, PyTorch's nn.MultiheadAttention layout (batch first):
//   x (B, L, E)  w_in (3E, E)  b_in (3E)  w_out (E, E)  b_out (E)  ->  y (B, L, E)
// then, from dy, dx and the four parameter gradients (accumulated).
struct NaiveModule {
  int64_t E = 0, heads = 0;
  std::vector<float> w_in, b_in, w_out, b_out;
  std::vector<float> dw_in, db_in, dw_out, db_out;
};
void naive_module_forward_backward(NaiveModule& m, const float* x, const float* dy, float* y, float* dx,
                                   int64_t B, int64_t L, bool causal, int threads);

}  // namespace multihead::bench
