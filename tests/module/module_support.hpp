// Test-side helpers for the module tests: random tensors, element reads into double,
// the module's weights as double arrays under PyTorch's names, and a tolerance check.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "multihead/multihead.hpp"

namespace multihead::test {

using Vec = std::vector<double>;

inline double uniform(std::mt19937_64& rng, double lo, double hi) {
  return lo + (hi - lo) * double(rng() >> 11) * 0x1.0p-53;
}

inline Tensor random_tensor(std::mt19937_64& rng, std::initializer_list<int64_t> shape, double lo = -1.0,
                            double hi = 1.0) {
  Tensor t = Tensor::empty(DType::kF32, shape);
  float* p = t.data_as<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = float(uniform(rng, lo, hi));
  return t;
}

inline double element(const TensorView& v, int64_t offset) {
  switch (v.dtype) {
    case DType::kF32:
      return static_cast<const float*>(v.data)[offset];
    case DType::kBF16:
      return bf16_to_float(static_cast<const bf16*>(v.data)[offset]);
    case DType::kF16:
      return f16_to_float(static_cast<const f16*>(v.data)[offset]);
    case DType::kBool:
      return static_cast<const bool*>(v.data)[offset] ? 1.0 : 0.0;
    case DType::kI32:
      return static_cast<const int32_t*>(v.data)[offset];
    case DType::kI64:
      return double(static_cast<const int64_t*>(v.data)[offset]);
  }
  return 0.0;
}

// Elements of a rank <= 4 view of any strides, in row-major logical order.
inline Vec to_vec(const TensorView& v) {
  Shape shape{1, 1, 1, 1}, strides{0, 0, 0, 0};
  for (int d = 0; d < v.rank; ++d) {
    shape[4 - v.rank + d] = v.shape[d];
    strides[4 - v.rank + d] = v.strides[d];
  }
  Vec r;
  r.reserve(size_t(v.numel()));
  for (int64_t a = 0; a < shape[0]; ++a)
    for (int64_t b = 0; b < shape[1]; ++b)
      for (int64_t c = 0; c < shape[2]; ++c)
        for (int64_t e = 0; e < shape[3]; ++e)
          r.push_back(element(v, a * strides[0] + b * strides[1] + c * strides[2] + e * strides[3]));
  return r;
}

// max|got - want| <= tol * max|want| + floor, with the worst element in the message.
inline void expect_close(const std::string& what, const Vec& got, const Vec& want, double tol, double floor = 1e-6) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double err = 0, scale = 0;
  size_t worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_TRUE(std::isfinite(got[i])) << what << ": non-finite element " << i;
    const double e = std::abs(got[i] - want[i]);
    if (e > err) err = e, worst = i;
    scale = std::max(scale, std::abs(want[i]));
  }
  EXPECT_LE(err, tol * scale + floor) << what << ": max error " << err << " at element " << worst << " (got "
                                      << got[worst] << ", want " << want[worst] << "), max |want| " << scale;
}

// The module's parameters as double arrays under PyTorch's names.
inline std::map<std::string, Vec> weights_of(const MultiHeadAttention& m) {
  std::map<std::string, Vec> r;
  for (const auto& [name, view] : m.state_dict()) r[name] = to_vec(view);
  return r;
}

inline std::map<std::string, Vec> grads_of(MultiHeadAttention& m) {
  std::map<std::string, Vec> r;
  for (const Parameter& p : m.parameters()) r[p.name] = to_vec(p.grad->view());
  return r;
}

}  // namespace multihead::test
