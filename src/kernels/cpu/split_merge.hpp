// Merging the partial softmax states of key chunks by their LSE, shared by the SIMD
// decode path (merge_splits) and the paged-cache kernels (SIMD and portable alike).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/cpu/tile_ops.hpp"

namespace multihead::detail {

// Merges `splits` partial states in split order into m, l (rows each) and O (rows x Dv,
// row-major). part(c) is split c's slot: m at [0, rows), l at [rows_pad, rows_pad + rows),
// O row-major (Dv a row) from 2·rows_pad.
//   m = max_c m_c,  l = Σ_c l_c e^(m_c - m),  O = Σ_c O_c e^(m_c - m)
// A split that saw no allowed key of a row (m_c = -inf, l_c = 0) adds nothing to it; one
// whose l_c is NaN (it saw a NaN score) makes the row NaN.
template <class Part>
void merge_partials(int64_t splits, int64_t rows, int64_t rows_pad, int64_t Dv, Part&& part, float* m, float* l,
                    float* o) {
  std::fill_n(m, rows, kNegInf);
  for (int64_t c = 0; c < splits; ++c)
    for (int64_t r = 0; r < rows; ++r) m[r] = nan_max(m[r], part(c)[r]);
  std::fill_n(l, rows, 0.0f);
  std::fill_n(o, rows * Dv, 0.0f);
  for (int64_t c = 0; c < splits; ++c) {
    const float* slot = part(c);
    for (int64_t r = 0; r < rows; ++r) {
      if (row_is_empty(slot[r], slot[rows_pad + r])) continue;  // this split saw no allowed key of row r
      const float weight = std::exp(slot[r] - m[r]);
      l[r] += slot[rows_pad + r] * weight;
      for (int64_t a = 0; a < Dv; ++a) o[r * Dv + a] += slot[2 * rows_pad + r * Dv + a] * weight;
    }
  }
}

}  // namespace multihead::detail
