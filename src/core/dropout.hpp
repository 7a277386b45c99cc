// Attention dropout's keep decision, shared by the kernels and the reference so
// both drop exactly the same weights. A counter-based hash of the element's place
// in the (B, H, Lq, Lk) grid: independent of tiling, threads and call order.
#pragma once

#include <cstdint>

#include "core/random.hpp"

namespace multihead::detail {

// The factor that multiplies P_ij: 0 when dropped, 1 / (1 - p) when kept.
// i and j are rows of the q and k tensors (packed sequences use their global rows).
inline float dropout_factor(uint64_t seed, float p, int64_t b, int64_t h, int64_t i, int64_t j, int64_t H,
                            int64_t Lq, int64_t Lk) {
  const uint64_t index = uint64_t(((b * H + h) * Lq + i) * Lk + j);
  const uint64_t x = splitmix64(seed + kGoldenGamma * index);
  const float u = float(x >> 40) * (1.0f / 16777216.0f);  // 24 bits: uniform in [0, 1)
  return u < p ? 0.0f : 1.0f / (1.0f - p);
}

}  // namespace multihead::detail
