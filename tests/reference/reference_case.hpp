// The oracle's test problem, shared by its own tests (finite_difference_test.cpp,
// reference_forward_test.cpp): f32 inputs on an exact grid in test-owned vectors, with
// sizes and options set by the test, viewed and run through the reference attention.
#pragma once

#include <cstdint>
#include <functional>
#include <numeric>
#include <random>
#include <vector>

#include "reference/attention_reference.hpp"

namespace multihead::reference_test {

namespace ref = multihead::reference;

// A contiguous view of `shape` over data owned by a test vector.
inline TensorView view(const void* data, DType dtype, const std::vector<int64_t>& shape) {
  TensorView t;
  t.data = const_cast<void*>(data);
  t.dtype = dtype;
  t.rank = int(shape.size());
  int64_t stride = 1;
  for (int d = t.rank - 1; d >= 0; --d) {
    t.shape[size_t(d)] = shape[size_t(d)];
    t.strides[size_t(d)] = stride;
    stride *= shape[size_t(d)];
  }
  return t;
}

inline int64_t numel(const std::vector<int64_t>& shape) {
  return std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<>());
}

// Inputs live on a 2^-7 grid in [-2, 2], so x ± kStep is exact in f32: the central
// differences of finite_difference_test.cpp perturb each input by exactly ±kStep.
inline constexpr double kStep = 0x1p-20;
inline float grid_value(std::mt19937& rng) {
  return float(std::uniform_int_distribution<int>(-256, 256)(rng)) / 128.0f;
}

// One attention problem with f32 inputs; the test sets sizes and options, init()
// draws the tensors.
struct Case {
  int64_t B = 2, Lq = 3, Lk = 4, H = 2, Hkv = 2, D = 3, Dv = 3;
  AttentionOptions scalars;            // scale, causal, window, softcap
  std::vector<int64_t> mask_shape;     // empty: no mask
  std::vector<int64_t> bias_shape;     // empty: no bias
  bool with_sinks = false, with_alibi = false;
  std::vector<int32_t> seqlens_k;      // empty: no key padding
  std::vector<int32_t> cu_q, cu_k;     // empty: not varlen

  std::vector<float> q, k, v, dout, bias, sinks, slopes;
  std::vector<uint8_t> mask;

  void init(uint32_t seed) {
    std::mt19937 rng(seed);
    auto draw = [&](std::vector<float>& x, int64_t n) {
      x.resize(size_t(n));
      for (float& e : x) e = grid_value(rng);
    };
    draw(q, B * Lq * H * D);
    draw(k, B * Lk * Hkv * D);
    draw(v, B * Lk * Hkv * Dv);
    draw(dout, B * Lq * H * Dv);
    if (!bias_shape.empty()) draw(bias, numel(bias_shape));
    if (with_sinks) draw(sinks, H);
    if (with_alibi)
      for (int64_t h = 0; h < H; ++h) slopes.push_back(0.25f * float(h + 1));
    if (!mask_shape.empty()) {
      mask.resize(size_t(numel(mask_shape)));
      std::bernoulli_distribution keep(0.7);
      for (uint8_t& m : mask) m = keep(rng);
    }
  }

  TensorView q_view() const { return view(q.data(), DType::kF32, {B, Lq, H, D}); }
  TensorView k_view() const { return view(k.data(), DType::kF32, {B, Lk, Hkv, D}); }
  TensorView v_view() const { return view(v.data(), DType::kF32, {B, Lk, Hkv, Dv}); }
  TensorView dout_view() const { return view(dout.data(), DType::kF32, {B, Lq, H, Dv}); }

  AttentionOptions options() const {
    AttentionOptions o = scalars;
    if (!mask_shape.empty()) o.mask = view(mask.data(), DType::kBool, mask_shape);
    if (!bias_shape.empty()) o.bias = view(bias.data(), DType::kF32, bias_shape);
    if (with_sinks) o.sinks = view(sinks.data(), DType::kF32, {H});
    if (with_alibi) o.alibi_slopes = view(slopes.data(), DType::kF32, {H});
    if (!seqlens_k.empty()) o.seqlens_k = view(seqlens_k.data(), DType::kI32, {B});
    if (!cu_q.empty()) {
      o.cu_seqlens_q = view(cu_q.data(), DType::kI32, {int64_t(cu_q.size())});
      o.cu_seqlens_k = view(cu_k.data(), DType::kI32, {int64_t(cu_k.size())});
    }
    return o;
  }

  ref::ForwardResult forward() const { return ref::attention_forward(q_view(), k_view(), v_view(), options()); }
  ref::BackwardResult backward() const {
    return ref::attention_backward(dout_view(), q_view(), k_view(), v_view(), options());
  }
  // The scalar loss whose gradient the backward computes: sum(out * dout).
  double loss() const {
    const std::vector<double> out = forward().out;
    double l = 0;
    for (size_t e = 0; e < out.size(); ++e) l += out[e] * double(dout[e]);
    return l;
  }
};

}  // namespace multihead::reference_test
