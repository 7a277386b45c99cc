#include "kernels/cpu/bf16_dot.hpp"

#include <immintrin.h>

#include <algorithm>
#include <type_traits>

#include "kernels/cpu/lane_sum.hpp"

// g++ 12 reports the _mm512_undefined_*() inside its own intrinsics as (maybe) uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace multihead::detail {

#define MULTIHEAD_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

bool has_avx512_bf16() {
  static const bool has = __builtin_cpu_supports("avx512bf16");
  return has;
}

namespace {

// A accumulator pairs in registers: the template argument (not a runtime flag) decides
// how they start, so the compiler keeps them out of memory.
template <int A, bool kAccumulate>
MULTIHEAD_BF16_TARGET inline void bf16_outer_micro(const uint32_t* vec, int64_t vstride, const uint32_t* sc,
                                                   int64_t sa, int64_t sx, int64_t X2, float* out,
                                                   int64_t out_stride, float scale) {
  __m512 acc0[A], acc1[A];
  for (int a = 0; a < A; ++a) {
    if constexpr (kAccumulate) {
      acc0[a] = _mm512_loadu_ps(out + a * out_stride);
      acc1[a] = _mm512_loadu_ps(out + a * out_stride + 16);
    } else {
      acc0[a] = _mm512_setzero_ps();
      acc1[a] = _mm512_setzero_ps();
    }
  }
  for (int64_t x = 0; x < X2; ++x) {
    const __m512bh v0 = (__m512bh)_mm512_loadu_si512(vec + x * vstride);
    const __m512bh v1 = (__m512bh)_mm512_loadu_si512(vec + x * vstride + 16);
    const uint32_t* s = sc + x * sx;
    for (int a = 0; a < A; ++a) {
      const __m512bh b = (__m512bh)_mm512_set1_epi32(int(s[a * sa]));
      acc0[a] = _mm512_dpbf16_ps(acc0[a], b, v0);
      acc1[a] = _mm512_dpbf16_ps(acc1[a], b, v1);
    }
  }
  if constexpr (!kAccumulate) {
    const __m512 vs = _mm512_set1_ps(scale);
    for (int a = 0; a < A; ++a) acc0[a] = _mm512_mul_ps(acc0[a], vs), acc1[a] = _mm512_mul_ps(acc1[a], vs);
  }
  for (int a = 0; a < A; ++a) {
    _mm512_storeu_ps(out + a * out_stride, acc0[a]);
    _mm512_storeu_ps(out + a * out_stride + 16, acc1[a]);
  }
}

template <bool kAccumulate>
MULTIHEAD_BF16_TARGET void bf16_outer_product_impl(const uint32_t* vec, int64_t vstride, const uint32_t* sc,
                                                   int64_t sa, int64_t sx, int64_t X2, int64_t count,
                                                   int64_t width, float* out, float scale) {
  constexpr int kA = 8;  // 16 accumulators of AVX-512's 32 registers
  const int64_t full = count / kA * kA;
  for (int64_t r0 = 0; r0 < width; r0 += 32) {
    for (int64_t a0 = 0; a0 < full; a0 += kA)
      bf16_outer_micro<kA, kAccumulate>(vec + r0, vstride, sc + a0 * sa, sa, sx, X2, out + a0 * width + r0, width,
                                        scale);
    const uint32_t* sc_tail = sc + full * sa;
    float* out_tail = out + full * width + r0;
    const auto tail = [&](auto a) {
      bf16_outer_micro<decltype(a)::value, kAccumulate>(vec + r0, vstride, sc_tail, sa, sx, X2, out_tail, width,
                                                        scale);
    };
    switch (count - full) {
      case 0: break;
      case 1: tail(std::integral_constant<int, 1>{}); break;
      case 2: tail(std::integral_constant<int, 2>{}); break;
      case 3: tail(std::integral_constant<int, 3>{}); break;
      case 4: tail(std::integral_constant<int, 4>{}); break;
      case 5: tail(std::integral_constant<int, 5>{}); break;
      case 6: tail(std::integral_constant<int, 6>{}); break;
      default: tail(std::integral_constant<int, 7>{}); break;
    }
  }
}

template <int R>
MULTIHEAD_BF16_TARGET void dot_block(const uint32_t* const* q_rows, const uint16_t* const* k_rows, int64_t D,
                                     float* sums) {
  constexpr int C = 16 / R;
  __m512 acc[16];
#pragma GCC unroll 16
  for (int e = 0; e < 16; ++e) acc[e] = _mm512_setzero_ps();
  for (int64_t x = 0; x < D; x += 32) {
    const __mmask32 valid = D - x >= 32 ? ~__mmask32(0) : (__mmask32(1) << (D - x)) - 1;
    __m512bh q[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) q[r] = (__m512bh)_mm512_loadu_si512(q_rows[r] + x / 2);
#pragma GCC unroll 16
    for (int c = 0; c < C; ++c) {
      const __m512bh k = (__m512bh)_mm512_maskz_loadu_epi16(valid, k_rows[c] + x);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) acc[r * C + c] = _mm512_dpbf16_ps(acc[r * C + c], q[r], k);
    }
  }
  __m512 sum_in[16];  // a copy, so acc itself never has its address taken and stays in registers
#pragma GCC unroll 16
  for (int e = 0; e < 16; ++e) sum_in[e] = acc[e];
  _mm512_storeu_ps(sums, sum_lanes16(sum_in));
}

}  // namespace

void bf16_dot_block(int R, const uint32_t* const* q_rows, const uint16_t* const* k_rows, int64_t D, float* sums) {
  switch (R) {
    case 1: dot_block<1>(q_rows, k_rows, D, sums); break;
    case 2: dot_block<2>(q_rows, k_rows, D, sums); break;
    default: dot_block<4>(q_rows, k_rows, D, sums); break;
  }
}

MULTIHEAD_BF16_TARGET void bf16_outer_product(const uint32_t* vec, int64_t vstride, const uint32_t* sc, int64_t sa,
                                              int64_t sx, int64_t X2, int64_t count, int64_t width, float* out,
                                              bool accumulate, float scale) {
  if (accumulate) bf16_outer_product_impl<true>(vec, vstride, sc, sa, sx, X2, count, width, out, scale);
  else bf16_outer_product_impl<false>(vec, vstride, sc, sa, sx, X2, count, width, out, scale);
}

MULTIHEAD_BF16_TARGET void bf16_pair_rows(const float* in, int64_t in_stride, int64_t n2, int64_t width,
                                          uint32_t* out, int64_t out_stride) {
  for (int64_t x = 0; x < n2; ++x) {
    const float* even = in + 2 * x * in_stride;
    const float* odd = even + in_stride;
    for (int64_t r = 0; r < width; r += 16) {
      // vcvtneps2bf16 rounds to nearest even; the pair is (even in the low half, odd high).
      const __m512i lo = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(even + r)));
      const __m512i hi = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(odd + r)));
      _mm512_storeu_si512(out + x * out_stride + r, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
    }
  }
}

MULTIHEAD_BF16_TARGET void bf16_pair_source_rows(const uint16_t* src, int64_t src_stride, int64_t n, int64_t width,
                                                 int64_t n2, uint32_t* out, int64_t out_stride) {
  const int64_t full = width / 16 * 16;
  for (int64_t x = 0; x < n2; ++x) {
    uint32_t* dst = out + x * out_stride;
    if (2 * x >= n) {
      std::fill_n(dst, width, 0u);
      continue;
    }
    const uint16_t* even = src + 2 * x * src_stride;
    const uint16_t* odd = 2 * x + 1 < n ? even + src_stride : nullptr;  // past n: a zero row
    int64_t r = 0;
    for (; r < full; r += 16) {
      const __m512i lo = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(even + r)));
      const __m512i hi = odd ? _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(odd + r)))
                             : _mm512_setzero_si512();
      _mm512_storeu_si512(dst + r, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
    }
    for (; r < width; ++r) dst[r] = uint32_t(even[r]) | (odd ? uint32_t(odd[r]) << 16 : 0u);
  }
}

void bf16_clear_pair_half(uint32_t* pairs, int64_t stride, int64_t c, int64_t width) {
  const uint32_t keep = c % 2 == 0 ? 0xffff0000u : 0x0000ffffu;
  uint32_t* row = pairs + c / 2 * stride;
  for (int64_t r = 0; r < width; ++r) row[r] &= keep;
}

}  // namespace multihead::detail
