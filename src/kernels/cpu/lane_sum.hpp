// sum_lanes16: sixteen horizontal sums at once, shared by the f32 decode scores
// (simd_tiles-inl.hpp) and the bf16 ones (bf16_dot.cpp), so both reduce alike.
#pragma once

#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f")

namespace multihead::detail {

// [a0+a1, a2+a3, b0+b1, b2+b3] in 128-bit blocks.
inline __m512 add_block_halves(__m512 a, __m512 b) {
  return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
}

// Lane i of the result is the sum of the lanes of v[i], by one fixed tree for every lane
// (pairs of 128-bit lanes, then 128-bit blocks): 45 instructions for 16 sums, where 16
// horizontal sums take ~160 and a serial chain each. Call it only where the CPU has AVX-512.
inline __m512 sum_lanes16(const __m512* v) {
  __m512 u[8], w[4];
  for (int i = 0; i < 8; ++i)  // per block [a0+a2, b0+b2, a1+a3, b1+b3]
    u[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 4; ++i)  // per block the block sums of v[4i .. 4i+3]
    w[i] = _mm512_add_ps(_mm512_shuffle_ps(u[2 * i], u[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_ps(u[2 * i], u[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  return add_block_halves(add_block_halves(w[0], w[1]), add_block_halves(w[2], w[3]));
}

}  // namespace multihead::detail

#pragma GCC pop_options
