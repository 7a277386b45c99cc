#include "attention/nonfinite.hpp"

#include <bit>
#include <cstdint>

namespace multihead::detail {

namespace {

// The f32 bit pattern of an element (bf16 and f16 widened exactly).
uint32_t f32_bits(const TensorView& t, int64_t offset) {
  switch (t.dtype) {
    case DType::kF32: return std::bit_cast<uint32_t>(static_cast<const float*>(t.data)[offset]);
    case DType::kBF16: return uint32_t(static_cast<const bf16*>(t.data)[offset].bits) << 16;
    case DType::kF16: return std::bit_cast<uint32_t>(f16_to_float(static_cast<const f16*>(t.data)[offset]));
    default: return 0;  // not a float tensor: nothing to find
  }
}

constexpr uint32_t kExponent = 0x7f800000u, kMagnitude = 0x7fffffffu;
bool nonfinite_bits(uint32_t b) { return (b & kExponent) == kExponent; }
bool nan_or_positive_inf_bits(uint32_t b) { return (b & kMagnitude) > kExponent || b == kExponent; }

// True when bad(bits) holds for some element of t: rows along the last dim, contiguous f32
// rows in a loop the compiler vectorizes (the backward scans q, out and dout on every call).
template <bool (*Bad)(uint32_t)>
bool any_element(const TensorView& t) {
  if (t.data == nullptr || t.numel() == 0) return false;
  if (t.rank == 0) return Bad(f32_bits(t, 0));  // a scalar (a bias may be one): no last dim
  const int last = t.rank - 1;
  const int64_t n = t.shape[last], stride = t.strides[last];
  int64_t index[kMaxRank] = {};
  for (;;) {
    int64_t offset = 0;
    for (int d = 0; d < last; ++d) offset += index[d] * t.strides[d];
    bool bad = false;
    if (t.dtype == DType::kF32 && stride == 1) {
      const uint32_t* row = reinterpret_cast<const uint32_t*>(static_cast<const float*>(t.data) + offset);
      for (int64_t e = 0; e < n; ++e) bad |= Bad(row[e]);
    } else {
      for (int64_t e = 0; e < n; ++e) bad |= Bad(f32_bits(t, offset + e * stride));
    }
    if (bad) return true;
    int d = last - 1;
    for (; d >= 0; --d) {
      if (++index[d] < t.shape[d]) break;
      index[d] = 0;
    }
    if (d < 0) return false;
  }
}

}  // namespace

bool holds_nonfinite(const TensorView& t) { return any_element<nonfinite_bits>(t); }

bool holds_nan_or_positive_inf(const TensorView& t) { return any_element<nan_or_positive_inf_bits>(t); }

bool backward_inputs_nonfinite(const TensorView& dout, const TensorView& q, const TensorView& out,
                               const TensorView& lse, const AttentionOptions& options) {
  for (const TensorView* t : {&dout, &q, &out})
    if (holds_nonfinite(*t)) return true;
  if (holds_nan_or_positive_inf(lse)) return true;
  if (options.bias && holds_nan_or_positive_inf(*options.bias)) return true;
  return options.sinks && holds_nonfinite(*options.sinks);
}

}  // namespace multihead::detail
