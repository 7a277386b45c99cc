// The module's rotary positions: Q and K heads rotated in place by apply_rotary (the same
// arithmetic users call), and the transpose for the gradients.
//
// Each pair (a, b) turns by its angle θ: R(θ) (a, b) = (a c - b s, b c + a s). The chain
// rule needs Rᵀ = R(-θ): (a c + b s, b c - a s), which is N R(θ) N with N negating each
// pair's second element (exact), so the transpose shares apply_rotary's rounding.
#include <vector>

#include "module/module_state.hpp"
#include "multihead/rotary.hpp"

namespace multihead::detail {

namespace {

// x[..., second element of each pair] *= -1 over the rotated features.
void negate_second(const TensorView& x, const MultiHeadAttentionConfig& c) {
  float* data = static_cast<float*>(x.data);
  const int64_t half = c.rotary_dim / 2;
  for (int64_t b = 0; b < x.shape[0]; ++b)
    for (int64_t l = 0; l < x.shape[1]; ++l)
      for (int64_t h = 0; h < x.shape[2]; ++h) {
        float* row = data + b * x.strides[0] + l * x.strides[1] + h * x.strides[2];
        for (int64_t i = 0; i < half; ++i) {
          float& second = row[(c.rotary_interleaved ? 2 * i + 1 : half + i) * x.strides[3]];
          second = -second;
        }
      }
}

}  // namespace

void rotate_heads(const TensorView& x, const MultiHeadAttentionConfig& c, std::span<const int64_t> first,
                  bool transpose) {
  if (c.rotary_dim == 0 || x.numel() == 0) return;
  const int64_t B = x.shape[0], L = x.shape[1];
  Tensor positions = Tensor::empty(DType::kI64, {B, L});
  int64_t* pos = positions.data_as<int64_t>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t l = 0; l < L; ++l) pos[b * L + l] = (first.empty() ? 0 : first[size_t(b)]) + l;
  if (transpose) negate_second(x, c);
  apply_rotary(x, positions.view(), x, RotaryOptions{c.rotary_dim, c.rotary_base, c.rotary_interleaved});
  if (transpose) negate_second(x, c);
}

}  // namespace multihead::detail
