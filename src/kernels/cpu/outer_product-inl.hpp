// The register-blocked outer-product micro-kernel of the SIMD tiles (re-included once per
// Highway target).
//
// Layout: the rows of a work item (the group's query heads x a block of queries) run
// along vectors. Scores are kept transposed, Sᵀ (kTileK keys x rows_pad), and the output
// accumulator too, Oᵀ (dv_pad x rows_pad). Both products are then one micro-kernel:
//   out[a, r..r+2N) (+)= Σ_x scalar(x, a) · vec[x, r..r+2N)
// with a scalar broadcast per (x, a) and two vector loads per x:
//   Sᵀ = K Qᵀ :  x = d over D,  scalar = K[key a, d],  vec = Qᵀ[d, rows]
//   Oᵀ += Vᵀ Pᵀ: x = key c,     scalar = V[c, dim a],  vec = Pᵀ[c, rows]
// and the online softmax runs down the key axis on whole row vectors, with no
// horizontal reductions.
#if defined(MULTIHEAD_OUTER_PRODUCT_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MULTIHEAD_OUTER_PRODUCT_INL_H_
#undef MULTIHEAD_OUTER_PRODUCT_INL_H_
#else
#define MULTIHEAD_OUTER_PRODUCT_INL_H_
#endif

#include <type_traits>

#include <hwy/highway.h>

#include "kernels/cpu/simd_common-inl.hpp"

HWY_BEFORE_NAMESPACE();
namespace multihead {
namespace detail {
namespace HWY_NAMESPACE {

// out[a, :W vectors) (+)= Σ_x sc[a·sa + x·sx] · vec[x·vstride + :W vectors) for A values of a.
template <int A, int W>
HWY_INLINE void outer_micro(const float* HWY_RESTRICT vec, int64_t vstride, const float* HWY_RESTRICT sc,
                            int64_t sa, int64_t sx, int64_t X, float* HWY_RESTRICT out, int64_t out_stride,
                            bool accumulate) {
  const FloatTag d;
  const size_t N = hn::Lanes(d);
  using V = hn::Vec<FloatTag>;
  V acc[A][W];
  for (int a = 0; a < A; ++a)
    for (int w = 0; w < W; ++w) acc[a][w] = accumulate ? hn::Load(d, out + a * out_stride + w * N) : hn::Zero(d);
  for (int64_t x = 0; x < X; ++x) {
    V v[W];
    for (int w = 0; w < W; ++w) v[w] = hn::LoadU(d, vec + x * vstride + w * N);  // may be a caller's row (decode)
    const float* s = sc + x * sx;
    for (int a = 0; a < A; ++a) {
      const V b = hn::Set(d, s[a * sa]);
      for (int w = 0; w < W; ++w) acc[a][w] = hn::MulAdd(b, v[w], acc[a][w]);
    }
  }
  for (int a = 0; a < A; ++a)
    for (int w = 0; w < W; ++w) hn::Store(acc[a][w], d, out + a * out_stride + w * N);
}

// One strip of W vectors of out: count values of a in blocks of A, then the rest.
template <int A, int W>
HWY_INLINE void outer_strip(const float* HWY_RESTRICT vec, int64_t vstride, const float* HWY_RESTRICT sc,
                            int64_t sa, int64_t sx, int64_t X, int64_t count, int64_t width, float* HWY_RESTRICT out,
                            bool accumulate) {
  const int64_t full = count / A * A;
  for (int64_t a0 = 0; a0 < full; a0 += A)
    outer_micro<A, W>(vec, vstride, sc + a0 * sa, sa, sx, X, out + a0 * width, width, accumulate);
  const float* sc_tail = sc + full * sa;
  float* out_tail = out + full * width;
  const auto tail = [&](auto rest) {
    outer_micro<decltype(rest)::value, W>(vec, vstride, sc_tail, sa, sx, X, out_tail, width, accumulate);
  };
  switch (count - full) {  // the last count % A values of a
    case 0: break;
    case 1: tail(std::integral_constant<int, 1>{}); break;
    case 2: tail(std::integral_constant<int, 2>{}); break;
    case 3: tail(std::integral_constant<int, 3>{}); break;
    case 4: if constexpr (A > 4) tail(std::integral_constant<int, 4>{}); break;
    case 5: if constexpr (A > 5) tail(std::integral_constant<int, 5>{}); break;
    case 6: if constexpr (A > 6) tail(std::integral_constant<int, 6>{}); break;
    default: if constexpr (A > 7) tail(std::integral_constant<int, 7>{}); break;
  }
}

// out (count x width) (+)= Σ_x sc(x, a) · vec[x, :] for a in [0, count); width (the vector
// axis, also out's row stride) is a multiple of 2 vectors.
HWY_INLINE void outer_product(const float* HWY_RESTRICT vec, int64_t vstride, const float* HWY_RESTRICT sc,
                              int64_t sa, int64_t sx, int64_t X, int64_t count, int64_t width,
                              float* HWY_RESTRICT out, bool accumulate) {
  const int64_t N = row_vector();
  int64_t r0 = 0;
#if HWY_TARGET <= HWY_AVX3
  // 4 vectors x 6 values: 24 accumulators and 10 loads per 24 FMAs (2 x 8: 10 per 16);
  // S2 4% faster. The sums run over x in the same order either way.
  for (; r0 + 4 * N <= width; r0 += 4 * N)
    outer_strip<6, 4>(vec + r0, vstride, sc, sa, sx, X, count, width, out + r0, accumulate);
#endif
  for (; r0 < width; r0 += 2 * N)
    outer_strip<kBroadcasts, 2>(vec + r0, vstride, sc, sa, sx, X, count, width, out + r0, accumulate);
}

// Sᵀ (kTileK x rows_pad) = K Qᵀ for kTileK K rows of stride k_stride >= D (packed, or
// where they lie).
inline void scores_t(const float* q_t, const float* k_rows, int64_t k_stride, int64_t D, const TileShape& t,
                     float* s_t) {
  outer_product(q_t, t.rows_pad, k_rows, k_stride, 1, D, kTileK, t.rows_pad, s_t, false);
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace detail
}  // namespace multihead
HWY_AFTER_NAMESPACE();

#endif  // MULTIHEAD_OUTER_PRODUCT_INL_H_
