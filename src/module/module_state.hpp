// Private to src/module/: what the module's files share. The sizes of a resolved config
// (Dims), the parameters in PyTorch's order (Param), grow-only buffers (Scratch), the
// module's State (weights, gradients, the tape of the last forward, scratch), element
// reads and writes of f32/bf16/f16 views, and the option lowering's entry points
// (option_lowering.cpp). Nothing here is part of the public API.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <span>
#include <string>

#include "multihead/attention.hpp"
#include "multihead/error.hpp"
#include "multihead/multi_head_attention.hpp"
#include "multihead/tensor.hpp"

namespace multihead::detail {

[[noreturn]] inline void fail(ErrorKind kind, const std::string& tensor, const std::string& dim,
                              const std::string& expected, const std::string& got) {
  throw Error(kind, tensor, dim, expected, got);
}

// Sizes of a resolved config in docs/CONTRACT.md letters; N* are projection widths.
struct Dims {
  int64_t E = 0, H = 0, Hkv = 0, d = 0, dv = 0, kdim = 0, vdim = 0, out = 0;
  int64_t nq() const { return H * d; }
  int64_t nk() const { return Hkv * d; }
  int64_t nv() const { return Hkv * dv; }
  int64_t ntot() const { return nq() + nk() + nv(); }
  int64_t hdv() const { return H * dv; }
  explicit Dims(const MultiHeadAttentionConfig& c)
      : E(c.embed_dim),
        H(c.num_heads),
        Hkv(c.num_kv_heads),
        d(c.head_dim),
        dv(c.v_head_dim),
        kdim(c.kdim),
        vdim(c.vdim),
        out(c.out_dim) {}
  // PyTorch's single in_proj_weight (3E, E): same input for q, k, v and equal widths.
  bool single_in_proj() const { return kdim == E && vdim == E && Hkv == H && nq() == E && dv == d; }
};

// Parameters in PyTorch's order (named_parameters of nn.MultiheadAttention).
enum Param { kInW, kQW, kKW, kVW, kInB, kBiasK, kBiasV, kOutW, kOutB, kNumParams };
inline constexpr std::array<const char*, kNumParams> kTorchNames = {
    "in_proj_weight", "q_proj_weight", "k_proj_weight",   "v_proj_weight", "in_proj_bias",
    "bias_k",         "bias_v",        "out_proj.weight", "out_proj.bias"};

// A buffer that only grows: reused across calls.
class Scratch {
 public:
  template <class T>
  T* get(int64_t n) {
    const size_t bytes = size_t(std::max<int64_t>(n, 1)) * sizeof(T);
    if (bytes > capacity_) {
      buffer_ = Tensor::empty(DType::kF32, {int64_t((bytes + 3) / 4)});
      capacity_ = buffer_.nbytes();
    }
    return static_cast<T*>(buffer_.data());
  }

 private:
  Tensor buffer_;
  size_t capacity_ = 0;
};

// Element `offset` of an f32, bf16 or f16 view, as f32.
inline float read_float(const TensorView& t, int64_t offset) {
  switch (t.dtype) {
    case DType::kF32:
      return static_cast<const float*>(t.data)[offset];
    case DType::kBF16:
      return bf16_to_float(static_cast<const bf16*>(t.data)[offset]);
    default:
      return f16_to_float(static_cast<const f16*>(t.data)[offset]);
  }
}

// Writes element `offset` of an f32 or bf16 view (the module's weight dtypes).
inline void write_float(const TensorView& t, int64_t offset, float x) {
  if (t.dtype == DType::kBF16)
    static_cast<bf16*>(t.data)[offset] = float_to_bf16(x);
  else
    static_cast<float*>(t.data)[offset] = x;
}

// Calls f(source offset, destination index) for every element of a rank <= 4 view, in
// row-major order.
template <class F>
void for_each_element(const TensorView& v, F&& f) {
  Shape shape{1, 1, 1, 1}, strides{0, 0, 0, 0};
  for (int d = 0; d < v.rank; ++d) {
    shape[4 - v.rank + d] = v.shape[d];
    strides[4 - v.rank + d] = v.strides[d];
  }
  int64_t n = 0;
  for (int64_t a = 0; a < shape[0]; ++a)
    for (int64_t b = 0; b < shape[1]; ++b)
      for (int64_t c = 0; c < shape[2]; ++c)
        for (int64_t e = 0; e < shape[3]; ++e) f(a * strides[0] + b * strides[1] + c * strides[2] + e * strides[3], n++);
}

inline TensorView view4(void* data, DType dtype, const Shape& shape, const Shape& strides) {
  TensorView v;
  v.data = data;
  v.dtype = dtype;
  v.rank = 4;
  v.shape = shape;
  v.strides = strides;
  return v;
}

// Option lowering (option_lowering.cpp). The user's options against the input keys
// (B, Lq, Lk of the inputs; extra appended keys are not the user's): throws what the
// functional API would, plus what the module does not take (cu_seqlens, dropout_p).
void check_module_options(const AttentionOptions& user, const Dims& dims, int64_t B, int64_t Lq, int64_t Lk,
                          bool need_weights);

// Where the lowered options' tensors live (owned by the module, reused across calls).
struct OptionBuffers {
  Scratch &mask, &bias, &seqlens, &alibi, &sinks;
};

// The functional API's options for one forward over Lk + extra keys (the last extra rows
// of k and v are its extra_keys), with owned copies of every tensor (backward reuses them;
// the caller's may be gone).
AttentionOptions lower_options(const AttentionOptions& user, OptionBuffers buf, int64_t extra);

// Input checks and copies (multi_head_attention.cpp): x must be f32 (B, L, features).
void check_input(const TensorView& x, const char* name, int64_t features, const char* letter);
// (B, L, F) view of any strides -> dense (B·L, F) rows.
void copy_rows(const TensorView& x, float* dst);

// Rotary positions (rotary_heads.cpp): rotates heads x (B, L, heads, dim) f32 in place,
// row l of batch b at position first[b] + l (first empty: 0), per the config's rotary_*;
// transpose applies Rᵀ instead (the chain rule of the gradients).
void rotate_heads(const TensorView& x, const MultiHeadAttentionConfig& c, std::span<const int64_t> first,
                  bool transpose);

}  // namespace multihead::detail

namespace multihead {

struct MultiHeadAttention::State {
  explicit State(const MultiHeadAttentionConfig& c) : dims(c), single_in_proj(dims.single_in_proj()) {}

  using Scratch = detail::Scratch;
  using Param = detail::Param;

  detail::Dims dims;
  bool single_in_proj;  // q, k, v weights stored as one in_proj_weight
  std::array<Tensor, detail::kNumParams> value, grad;  // empty when the config has no such parameter
  uint64_t dropout_calls = 0;

  // The tape: what backward needs from the last successful forward.
  bool has_forward = false;
  bool self = false;
  int64_t B = 0, Lq = 0, Lk = 0, Lke = 0;  // Lke = Lk + appended keys
  AttentionOptions options;                // its tensors are the owned copies below
  TensorView q, k, v;                      // attention inputs: head views into the projections
  TensorView heads, lse;                   // O (B, Lq, H, dv) f32, lse (B, H, Lq)
  const float *wq = nullptr, *wk = nullptr, *wv = nullptr, *wo = nullptr;  // f32 weights used
  const float *b_in = nullptr, *bo = nullptr, *bias_k = nullptr, *bias_v = nullptr;
  Scratch x_q, x_k, x_v;    // input copies, dense (B·L, features)
  Scratch proj_q, proj_kv;  // projections, f32 (layout in forward)
  Scratch low_q, low_kv;    // their bf16 roundings (bf16 weights)
  Scratch heads_buf, lse_buf;
  Scratch mask, bias, seqlens, alibi, sinks;
  Scratch w_in, w_out, b_all;  // f32 weights when the stored ones cannot be used as they are

  // Scratch of single calls.
  Scratch probs, dout, dheads, dq, dk, dv;

  bool has(Param p) const { return value[p].data() != nullptr; }
  float* g(Param p) const { return grad[p].data_as<float>(); }

  // The f32 weights the GEMMs read; back to back (q, k, v) when fused is asked
  // (parameters.cpp).
  void prepare_weights(bool fused);
};

}  // namespace multihead
