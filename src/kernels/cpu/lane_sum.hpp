// sum_lanes16: sixteen horizontal sums at once, shared by the f32 decode scores
// (simd_tiles-inl.hpp) and the bf16 ones (bf16_dot.cpp), so both reduce alike; sum_lanes8,
// its AVX2 counterpart for the f32 decode scores.
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
#pragma GCC push_options
#pragma GCC target("avx2")

namespace multihead::detail {

// Lane i of the result is the sum of the 8 lanes of v[i], by the tree of Highway's
// SumOfLanes on 256 bits, ((x0 + x4) + (x2 + x6)) + ((x1 + x5) + (x3 + x7)), so scores
// summed 8 at a time keep the bits of scores summed one by one: 22 instructions for 8
// sums, where 8 horizontal sums take ~48 and a serial chain each. AVX2 CPUs only.
inline __m256 sum_lanes8(const __m256* v) {
  __m256 u[4], w[2];
  for (int i = 0; i < 4; ++i)  // [y_a | y_b] with y_j = x_j + x_{j+4}, a = v[2i], b = v[2i+1]
    u[i] = _mm256_add_ps(_mm256_permute2f128_ps(v[2 * i], v[2 * i + 1], 0x20),
                         _mm256_permute2f128_ps(v[2 * i], v[2 * i + 1], 0x31));
  for (int i = 0; i < 2; ++i)  // per 128-bit block [y0 + y2, y1 + y3] of two vectors
    w[i] = _mm256_add_ps(_mm256_shuffle_ps(u[2 * i], u[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm256_shuffle_ps(u[2 * i], u[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  // (y0 + y2) + (y1 + y3), lanes in the order v[0], v[2], v[4], v[6], v[1], v[3], v[5], v[7]
  const __m256 sums = _mm256_add_ps(_mm256_shuffle_ps(w[0], w[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                    _mm256_shuffle_ps(w[0], w[1], _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm256_permutevar8x32_ps(sums, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

}  // namespace multihead::detail

#pragma GCC pop_options
