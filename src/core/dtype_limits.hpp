// Small facts about element types and index tensors that several layers need.
#pragma once

#include <cfloat>
#include <cstdint>

#include "multihead/tensor.hpp"

namespace multihead::detail {

// The lowest finite value of a float dtype, as f32 (exact): a bias at or below it masks
// (docs/CONTRACT.md), so -inf and the dtype's lowest both count.
inline float lowest_finite(DType dtype) {
  switch (dtype) {
    case DType::kBF16: return bf16_to_float(bf16{0xff7f});
    case DType::kF16: return -65504.0f;
    default: return -FLT_MAX;
  }
}

// Element i of a rank-1 int32 view (seqlens, cu_seqlens), any stride.
inline int32_t i32_at(const TensorView& v, int64_t i) { return static_cast<const int32_t*>(v.data)[i * v.strides[0]]; }

}  // namespace multihead::detail
