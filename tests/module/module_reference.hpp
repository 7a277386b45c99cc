// A straightforward double-precision composition of the module's math, for the module
// tests (multi_head_attention_test.cpp): projections done naively in double around the
// reference attention (src/reference/attention_reference.hpp) for the forward and the
// analytic backward chain, and an all-double composition (its own attention) whose loss
// central finite differences differentiate. The appended keys' semantics (always
// visible) are written out independently of the module: an explicit keep mask and bias
// per (b, h, i, j). Definitions in module_reference.cpp.
#pragma once

#include <cstdint>
#include <map>
#include <ostream>
#include <string>
#include <vector>

#include "module/module_support.hpp"
#include "multihead/multihead.hpp"

namespace multihead::test {

struct ModuleCase {
  std::string name;
  MultiHeadAttentionConfig config;
  bool cross = false;
  int64_t B = 2, Lq = 5, Lk = 5;
  CausalAlign causal = CausalAlign::kNone;
  Window window{};
  int mask_rank = 0;  // 0: none, 2: (Lq, Lk), 4: (B, 1, Lq, Lk)
  bool bias = false;  // additive (H, Lq, Lk), some -inf
  bool seqlens = false;
  bool alibi = false;
  float softcap = 0.0f;
  bool sinks = false;
  bool strided = false;  // inputs as non-contiguous views
  double tol = 1e-4;
};

inline void PrintTo(const ModuleCase& c, std::ostream* os) { *os << c.name; }

// Sizes of a resolved config.
struct Dims {
  int64_t E, H, Hkv, d, dv, kdim, vdim, out;
  bool packed;
  explicit Dims(const MultiHeadAttentionConfig& c)
      : E(c.embed_dim),
        H(c.num_heads),
        Hkv(c.num_kv_heads),
        d(c.head_dim),
        dv(c.v_head_dim),
        kdim(c.kdim),
        vdim(c.vdim),
        out(c.out_dim),
        packed(c.kdim == c.embed_dim && c.vdim == c.embed_dim && Hkv == H && H * d == E && dv == d) {}
  int64_t nq() const { return H * d; }
  int64_t nk() const { return Hkv * d; }
  int64_t nv() const { return Hkv * dv; }
  int64_t hdv() const { return H * dv; }
};

// Inputs and the user's options over the input keys; owns every tensor.
struct Problem {
  MultiHeadAttentionConfig config;  // resolved
  bool cross = false;
  int64_t B = 0, Lq = 0, Lk = 0, extra = 0;
  Tensor query_store, key_store, value_store;
  TensorView query, key, value;
  Tensor mask, bias, seqlens, alibi, sinks;
  AttentionOptions options;
  int64_t Lke() const { return Lk + extra; }
};

// The case's inputs (strided views when asked) and options, drawn from `seed`.
Problem make_problem(const ModuleCase& mc, uint64_t seed);

// The contract written out per element over Lk + extra keys, the appended ones always
// visible: keep (B, H, Lq, Lke) and an additive bias (ALiBi included), -inf = masked.
struct Full {
  std::vector<uint8_t> keep;
  Vec bias;
  bool has_bias = false;
};

Full materialize(const Problem& p);

struct Inputs {
  Vec xq, xk, xv;  // (B, L, features); xk = xv = xq for self-attention
};

// The problem's inputs in double.
Inputs inputs_of(const Problem& p);

// Forward of the double composition around the reference attention.
struct Composition {
  Tensor q, k, v;               // attention inputs, rounded to the attention dtype
  Tensor full_mask, full_bias;  // the reference's mask/bias when keys are appended
  AttentionOptions options;
  Vec heads;  // (B, Lq, H·dv)
  Vec out;    // (B, Lq, out_dim)
  Vec probs;  // (B, H, Lq, Lke)
};

// weights: the module's under PyTorch's names (weights_of); dropout and its seed go to the
// reference attention as the module passes them.
Composition compose_forward(const Problem& p, const std::map<std::string, Vec>& weights, float dropout,
                            uint64_t dropout_seed);

struct Gradients {
  std::map<std::string, Vec> params;  // PyTorch names
  Vec dquery, dkey, dvalue;           // dkey, dvalue empty for self-attention
};

// The analytic chain in double: output projection, reference attention backward, input
// projections; self-attention folds the three input gradients into dquery.
Gradients compose_backward(const Problem& p, const std::map<std::string, Vec>& weights, const Composition& c,
                           const Vec& dout);

// Σ out ⊙ G of an all-double composition (its own attention, from the materialized
// mask and bias): the function central differences differentiate.
double double_loss(const Problem& p, const Full& f, const std::map<std::string, Vec>& weights, const Inputs& x,
                   const Vec& G);

}  // namespace multihead::test
