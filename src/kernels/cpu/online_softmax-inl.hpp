// The SIMD forward's online softmax (re-included once per Highway target; included by
// flash_forward_simd.cpp only): down the key axis of Sᵀ on whole row vectors (tiled path),
// or along one row of S (decode path), and the output's rescaling.
#if defined(MULTIHEAD_ONLINE_SOFTMAX_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MULTIHEAD_ONLINE_SOFTMAX_INL_H_
#undef MULTIHEAD_ONLINE_SOFTMAX_INL_H_
#else
#define MULTIHEAD_ONLINE_SOFTMAX_INL_H_
#endif

#include <hwy/highway.h>

#include "kernels/cpu/simd_tiles-inl.hpp"

HWY_BEFORE_NAMESPACE();
namespace multihead {
namespace detail {
namespace HWY_NAMESPACE {
namespace {

// Online softmax down the key axis of Sᵀ for G row vectors from row r at once (G
// independent max and sum chains: one chain alone left the loop latency-bound):
//   m' = max(m, max_c s);  corr = e^(m - m');  l = l·corr + Σ_c e^(s - m');  Sᵀ <- e^(s - m')
// Rows with nothing allowed so far keep m = -inf, l = 0 and P = 0.
template <int G>
HWY_INLINE void online_softmax_vectors(const TileShape& t, int64_t r, float* HWY_RESTRICT s_t, float* HWY_RESTRICT m,
                                       float* HWY_RESTRICT l, float* HWY_RESTRICT corr) {
  const FloatTag d;
  const int64_t N = row_vector();
  const auto neg_inf = hn::Set(d, kNegInf);
  hn::Vec<FloatTag> m_new[G], m_safe[G], sum[G];
  for (int g = 0; g < G; ++g) m_new[g] = hn::Load(d, m + r + g * N);
  for (int64_t c = 0; c < kTileK; ++c)
    for (int g = 0; g < G; ++g) m_new[g] = hn::Max(m_new[g], hn::Load(d, s_t + c * t.rows_pad + r + g * N));
  for (int g = 0; g < G; ++g) {
    m_safe[g] = hn::IfThenZeroElse(hn::Eq(m_new[g], neg_inf), m_new[g]);  // -inf - -inf is NaN
    sum[g] = hn::Zero(d);
  }
  for (int64_t c = 0; c < kTileK; ++c)
    for (int g = 0; g < G; ++g) {
      float* at = s_t + c * t.rows_pad + r + g * N;
      const auto e = softmax_exp(hn::Sub(hn::Load(d, at), m_safe[g]));
      hn::Store(e, d, at);
      sum[g] = hn::Add(sum[g], e);
    }
  for (int g = 0; g < G; ++g) {
    const auto c = softmax_exp(hn::Sub(hn::Load(d, m + r + g * N), m_safe[g]));
    hn::Store(hn::MulAdd(hn::Load(d, l + r + g * N), c, sum[g]), d, l + r + g * N);
    hn::Store(m_new[g], d, m + r + g * N);
    hn::Store(c, d, corr + r + g * N);
  }
}

// online_softmax_vectors over every row vector of Sᵀ (rows_pad is a multiple of 2 vectors).
inline void online_softmax_columns(const TileShape& t, float* HWY_RESTRICT s_t, float* HWY_RESTRICT m,
                            float* HWY_RESTRICT l, float* HWY_RESTRICT corr) {
  const int64_t N = row_vector();
  int64_t r = 0;
  for (; r + 4 * N <= t.rows_pad; r += 4 * N) online_softmax_vectors<4>(t, r, s_t, m, l, corr);
  for (; r < t.rows_pad; r += 2 * N) online_softmax_vectors<2>(t, r, s_t, m, l, corr);
}

// The same for one row of a row-major score tile s (kTileK keys): returns the correction.
inline float online_softmax_row(float* HWY_RESTRICT s, float& m, float& l) {
  const FloatTag d;
  const int64_t N = row_vector();
  const auto neg_inf = hn::Set(d, kNegInf);
  auto vmax = neg_inf;
  for (int64_t c = 0; c < kTileK; c += N) vmax = hn::Max(vmax, hn::Load(d, s + c));
  const float m_new = std::max(m, hn::GetLane(hn::MaxOfLanes(d, vmax)));
  const auto vm = hn::Set(d, m_new == kNegInf ? 0.0f : m_new);
  auto vsum = hn::Zero(d);
  for (int64_t c = 0; c < kTileK; c += N) {
    const auto x = hn::Load(d, s + c);
    const auto e = softmax_exp(hn::Sub(x, vm));
    hn::Store(e, d, s + c);
    vsum = hn::Add(vsum, e);
  }
  const float correction = m == kNegInf ? 0.0f : std::exp(m - m_new);
  l = l * correction + hn::GetLane(hn::SumOfLanes(d, vsum));
  m = m_new;
  return correction;
}

// Oᵀ = Oᵀ · corr + Tᵀ (per row: corr = e^(m_old - m_new)), T one key tile's P·V summed on
// its own: a long key axis is then (keys per tile + tiles) roundings deep, not Lk (Lk = 4000:
// out was 3.5-6x PyTorch's f32 error with one running sum).
inline void merge_output_t(const TileShape& t, const float* HWY_RESTRICT corr, const float* HWY_RESTRICT tile_t,
                           float* HWY_RESTRICT o_t) {
  const FloatTag d;
  const int64_t N = row_vector();
  for (int64_t r = 0; r < t.rows_pad; r += N) {
    const auto c = hn::Load(d, corr + r);
    for (int64_t a = 0; a < t.dv_vec; ++a) {
      float* at = o_t + a * t.rows_pad + r;
      hn::Store(hn::MulAdd(hn::Load(d, at), c, hn::Load(d, tile_t + a * t.rows_pad + r)), d, at);
    }
  }
}

}  // namespace
// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace detail
}  // namespace multihead
HWY_AFTER_NAMESPACE();

#endif  // MULTIHEAD_ONLINE_SOFTMAX_INL_H_
