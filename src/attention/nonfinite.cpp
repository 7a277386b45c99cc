#include "attention/nonfinite.hpp"

#include <cmath>
#include <cstdint>

namespace multihead::detail {

namespace {

float element(const TensorView& t, int64_t offset) {
  switch (t.dtype) {
    case DType::kF32: return static_cast<const float*>(t.data)[offset];
    case DType::kBF16: return bf16_to_float(static_cast<const bf16*>(t.data)[offset]);
    case DType::kF16: return f16_to_float(static_cast<const f16*>(t.data)[offset]);
    default: return 0.0f;  // not a float tensor: nothing to scan
  }
}

// True when bad(x) holds for some element of t, walking its strides.
template <class Bad>
bool any_element(const TensorView& t, Bad bad) {
  if (t.data == nullptr || t.numel() == 0) return false;
  int64_t index[kMaxRank] = {};
  for (;;) {
    int64_t offset = 0;
    for (int d = 0; d < t.rank; ++d) offset += index[d] * t.strides[d];
    if (bad(element(t, offset))) return true;
    int d = t.rank - 1;
    for (; d >= 0; --d) {
      if (++index[d] < t.shape[d]) break;
      index[d] = 0;
    }
    if (d < 0) return false;
  }
}

}  // namespace

bool holds_nonfinite(const TensorView& t) {
  return any_element(t, [](float x) { return !std::isfinite(x); });
}

bool holds_nan_or_positive_inf(const TensorView& t) {
  return any_element(t, [](float x) { return std::isnan(x) || x == INFINITY; });
}

bool backward_inputs_nonfinite(const TensorView& dout, const TensorView& q, const TensorView& out,
                               const TensorView& lse, const AttentionOptions& options) {
  for (const TensorView* t : {&dout, &q, &out})
    if (holds_nonfinite(*t)) return true;
  if (holds_nan_or_positive_inf(lse)) return true;
  if (options.bias && holds_nan_or_positive_inf(*options.bias)) return true;
  return options.sinks && holds_nonfinite(*options.sinks);
}

}  // namespace multihead::detail
