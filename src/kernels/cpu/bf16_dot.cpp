#include "kernels/cpu/bf16_dot.hpp"

#include <immintrin.h>

// g++ 12 reports _mm512_undefined_epi32() inside its own intrinsics as maybe-uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace multihead::detail {

#define MULTIHEAD_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

bool has_avx512_bf16() {
  static const bool has = __builtin_cpu_supports("avx512bf16");
  return has;
}

namespace {

template <int A>
MULTIHEAD_BF16_TARGET inline void bf16_outer_micro(const uint32_t* vec, int64_t vstride, const uint32_t* sc,
                                                   int64_t sa, int64_t sx, int64_t X2, float* out,
                                                   int64_t out_stride, bool accumulate) {
  __m512 acc0[A], acc1[A];
  for (int a = 0; a < A; ++a) {
    acc0[a] = accumulate ? _mm512_loadu_ps(out + a * out_stride) : _mm512_setzero_ps();
    acc1[a] = accumulate ? _mm512_loadu_ps(out + a * out_stride + 16) : _mm512_setzero_ps();
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
  for (int a = 0; a < A; ++a) {
    _mm512_storeu_ps(out + a * out_stride, acc0[a]);
    _mm512_storeu_ps(out + a * out_stride + 16, acc1[a]);
  }
}

}  // namespace

MULTIHEAD_BF16_TARGET void bf16_outer_product(const uint32_t* vec, int64_t vstride, const uint32_t* sc, int64_t sa,
                                              int64_t sx, int64_t X2, int64_t count, int64_t width, float* out,
                                              bool accumulate) {
  constexpr int kA = 8;  // 16 accumulators of AVX-512's 32 registers
  const int64_t full = count / kA * kA;
  for (int64_t r0 = 0; r0 < width; r0 += 32) {
    for (int64_t a0 = 0; a0 < full; a0 += kA)
      bf16_outer_micro<kA>(vec + r0, vstride, sc + a0 * sa, sa, sx, X2, out + a0 * width + r0, width, accumulate);
    const uint32_t* sc_tail = sc + full * sa;
    float* out_tail = out + full * width + r0;
    switch (count - full) {
      case 0: break;
      case 1: bf16_outer_micro<1>(vec + r0, vstride, sc_tail, sa, sx, X2, out_tail, width, accumulate); break;
      case 2: bf16_outer_micro<2>(vec + r0, vstride, sc_tail, sa, sx, X2, out_tail, width, accumulate); break;
      case 3: bf16_outer_micro<3>(vec + r0, vstride, sc_tail, sa, sx, X2, out_tail, width, accumulate); break;
      case 4: bf16_outer_micro<4>(vec + r0, vstride, sc_tail, sa, sx, X2, out_tail, width, accumulate); break;
      case 5: bf16_outer_micro<5>(vec + r0, vstride, sc_tail, sa, sx, X2, out_tail, width, accumulate); break;
      case 6: bf16_outer_micro<6>(vec + r0, vstride, sc_tail, sa, sx, X2, out_tail, width, accumulate); break;
      default: bf16_outer_micro<7>(vec + r0, vstride, sc_tail, sa, sx, X2, out_tail, width, accumulate); break;
    }
  }
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

}  // namespace multihead::detail
