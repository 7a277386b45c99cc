// The decode path's dot products (re-included once per Highway target): scores of a few
// query rows against K rows where they lie, f32 or bf16 (vdpbf16ps), shared by the
// forward, its probabilities and statistics, and the backward.
#if defined(MULTIHEAD_DECODE_DOTS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MULTIHEAD_DECODE_DOTS_INL_H_
#undef MULTIHEAD_DECODE_DOTS_INL_H_
#else
#define MULTIHEAD_DECODE_DOTS_INL_H_
#endif

#include <cstring>
#include <type_traits>

#include <hwy/highway.h>

#include "kernels/cpu/bf16_dot.hpp"
#include "kernels/cpu/lane_sum.hpp"
#include "kernels/cpu/simd_common-inl.hpp"
#include "kernels/cpu/tile_packing-inl.hpp"

HWY_BEFORE_NAMESPACE();
namespace multihead {
namespace detail {
namespace HWY_NAMESPACE {

// Decode scoring and P·V read K and V rows where they lie, as f32, bf16 or f16: each row
// is used once per call, so packing would only copy it. Rows lie Hkv·D apart (often 4 KiB
// multiples), which the hardware prefetcher does not follow, so the caller asks for rows
// ahead (RowPrefetch) while it computes.

inline float widen(float x) { return x; }
inline float widen(bf16 x) { return bf16_to_float(x); }
inline float widen(f16 x) { return f16_to_float(x); }
inline float widen(int8_t x) { return float(x); }  // an int8 cache's quantized value (scale applied by the caller)

// Elements [x, x + N) of a row as one f32 vector (bf16 and f16 widened exactly, int8 as
// its integer values).
template <typename T>
HWY_INLINE hn::Vec<FloatTag> load_widened(const T* HWY_RESTRICT row, int64_t x) {
  const FloatTag d;
  if constexpr (std::is_same_v<T, float>) {
    return hn::LoadU(d, row + x);
  } else if constexpr (std::is_same_v<T, bf16>) {
    const hn::Rebind<hwy::bfloat16_t, FloatTag> dh;
    return hn::PromoteTo(d, hn::LoadU(dh, reinterpret_cast<const hwy::bfloat16_t*>(row) + x));
  } else if constexpr (std::is_same_v<T, int8_t>) {
    const hn::Rebind<int8_t, FloatTag> d8;
    const hn::Rebind<int32_t, FloatTag> d32;
    return hn::ConvertTo(d, hn::PromoteTo(d32, hn::LoadU(d8, row + x)));
  } else {
    const hn::Rebind<hwy::float16_t, FloatTag> dh;
    return hn::PromoteTo(d, hn::LoadU(dh, reinterpret_cast<const hwy::float16_t*>(row) + x));
  }
}

// Rows [0, count) of a tensor, stride_bytes apart: prefetch(c) asks for row c (its first
// `bytes`) into L1. Callers stay a few rows ahead: rows 4 KiB apart share the same few
// L1 sets, so rows fetched much earlier would be evicted before use.
struct RowPrefetch {
  const char* base = nullptr;
  int64_t stride_bytes = 0, bytes = 0, count = 0;
  void operator()(int64_t c) const {
    if (c >= count) return;
    const char* row = base + c * stride_bytes;
    for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(row + b, 0, 3);
  }
};

// Up to 4 rows of decode scores for key row kc: s[r·rs] = q_r · kc.
template <int R, typename T>
HWY_INLINE void dot_rows(const float* HWY_RESTRICT q, int64_t q_stride, const T* HWY_RESTRICT kc, int64_t D,
                         float* HWY_RESTRICT s, int64_t rs) {
  const FloatTag d;
  const int64_t N = row_vector(), full = D / N * N;
  hn::Vec<FloatTag> acc[R];
  for (int r = 0; r < R; ++r) acc[r] = hn::Zero(d);
  for (int64_t x = 0; x < full; x += N) {
    const auto k = load_widened(kc, x);
    for (int r = 0; r < R; ++r) acc[r] = hn::MulAdd(hn::LoadU(d, q + r * q_stride + x), k, acc[r]);
  }
  for (int r = 0; r < R; ++r) {
    float sum = hn::GetLane(hn::SumOfLanes(d, acc[r]));
    for (int64_t x = full; x < D; ++x) sum = std::fma(q[r * q_stride + x], widen(kc[x]), sum);
    s[r * rs] = sum;
  }
}

#if HWY_TARGET <= HWY_AVX3 || HWY_TARGET == HWY_AVX2
// Scores summed a block at a time: one vector of lane sums per accumulator.
inline constexpr int kDotBlock = HWY_TARGET <= HWY_AVX3 ? 16 : 8;

HWY_INLINE void store_lane_sums(const hn::Vec<FloatTag>* acc, float* HWY_RESTRICT sums) {
#if HWY_TARGET <= HWY_AVX3
  __m512 raw[16];
  for (int e = 0; e < 16; ++e) raw[e] = acc[e].raw;
  _mm512_store_ps(sums, sum_lanes16(raw));
#else
  __m256 raw[8];
  for (int e = 0; e < 8; ++e) raw[e] = acc[e].raw;
  _mm256_store_ps(sums, sum_lanes8(raw));
#endif
}

// A block of R rows x kDotBlock/R keys of decode scores: one accumulator per (row, key)
// along D, then the lane sums (sum_lanes16 or sum_lanes8). Rows and keys past the valid ones
// repeat the last valid one (results dropped), so every score goes through the same
// arithmetic whatever block it falls in.
template <int R, typename T, class Ahead>
HWY_INLINE void dot_block(const float* HWY_RESTRICT q, int64_t q_stride, int64_t rows, const T* HWY_RESTRICT k,
                          int64_t k_stride, int64_t D, int64_t c0, int64_t nk, float* HWY_RESTRICT s, int64_t rs,
                          int64_t cs, bool call_ahead, const Ahead& ahead) {
  constexpr int C = kDotBlock / R;
  const FloatTag d;
  const int64_t N = row_vector(), full = D / N * N;
  const float* qr[R];
  const T* kc[C];
  for (int r = 0; r < R; ++r) qr[r] = q + std::min<int64_t>(r, rows - 1) * q_stride;
  for (int c = 0; c < C; ++c) {
    if (call_ahead && c0 + c < nk) ahead(c0 + c);
    kc[c] = k + std::min<int64_t>(c0 + c, nk - 1) * k_stride;
  }
  hn::Vec<FloatTag> acc[kDotBlock];
  for (int e = 0; e < kDotBlock; ++e) acc[e] = hn::Zero(d);
  for (int64_t x = 0; x < full; x += N) {
    hn::Vec<FloatTag> qv[R];
    for (int r = 0; r < R; ++r) qv[r] = hn::LoadU(d, qr[r] + x);
    for (int c = 0; c < C; ++c) {
      const auto kv = load_widened(kc[c], x);
      for (int r = 0; r < R; ++r) acc[r * C + c] = hn::MulAdd(qv[r], kv, acc[r * C + c]);
    }
  }
  alignas(64) float sums[kDotBlock];
  store_lane_sums(acc, sums);
  for (int r = 0; r < R && r < rows; ++r)
    for (int c = 0; c < C && c0 + c < nk; ++c) {
      float sum = sums[r * C + c];
      for (int64_t x = full; x < D; ++x) sum = std::fma(qr[r][x], widen(kc[c][x]), sum);
      s[r * rs + (c0 + c) * cs] = sum;
    }
}
#endif

// S[r·rs + c·cs] = q_r · k_c for keys [0, nk) and rows [0, rows): one dot product along D
// per (row, key), in whole vectors, a fixed reduction and then a scalar tail, so the bits
// depend neither on whether k is a packed f32 tile or the K tensor itself (widening is
// exact) nor on how rows and keys are blocked (GQA and MHA give the same bits). q holds
// scaled queries, q_stride apart; k rows are k_stride apart. ahead(c) runs before key c.
template <typename T, class Ahead>
void dot_scores(const float* HWY_RESTRICT q, int64_t q_stride, int64_t rows, const T* HWY_RESTRICT k,
                int64_t k_stride, int64_t D, int64_t nk, float* HWY_RESTRICT s, int64_t rs, int64_t cs,
                const Ahead& ahead) {
#if HWY_TARGET <= HWY_AVX3 || HWY_TARGET == HWY_AVX2
  if (nk <= 0 || rows <= 0) return;
  // 1 or 2 rows: kDotBlock or kDotBlock/2 keys a block; otherwise blocks of 4 rows.
  const auto run = [&](auto rows_per_block) {
    constexpr int R = decltype(rows_per_block)::value;
    for (int64_t c0 = 0; c0 < nk; c0 += kDotBlock / R)
      for (int64_t r = 0; r < rows; r += R)
        dot_block<R>(q + r * q_stride, q_stride, rows - r, k, k_stride, D, c0, nk, s + r * rs, rs, cs, r == 0,
                     ahead);
  };
  if (rows == 1) run(std::integral_constant<int, 1>{});
  else if (rows == 2) run(std::integral_constant<int, 2>{});
  else run(std::integral_constant<int, 4>{});
#else
  for (int64_t c = 0; c < nk; ++c) {
    ahead(c);
    const T* kc = k + c * k_stride;
    float* sc = s + c * cs;
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4) dot_rows<4>(q + r * q_stride, q_stride, kc, D, sc + r * rs, rs);
    switch (rows - r) {
      case 0: break;
      case 1: dot_rows<1>(q + r * q_stride, q_stride, kc, D, sc + r * rs, rs); break;
      case 2: dot_rows<2>(q + r * q_stride, q_stride, kc, D, sc + r * rs, rs); break;
      default: dot_rows<3>(q + r * q_stride, q_stride, kc, D, sc + r * rs, rs); break;
    }
  }
#endif
}

// Decode queries as bf16 pairs: pairs per row, a multiple of 16 (no more than t.d_vec
// floats, so they fit where the f32 rows go).
inline int64_t query_pair_stride(const AttentionParams& p) { return round_up((p.D + 1) / 2, 16); }

// dot_scores for bf16 K on vdpbf16ps (bf16_dot_block, same blocking and lane sums): q as
// bf16 pairs, q_stride pairs apart, and s = scale · (q_r · k_c), the scale applied after
// the sum so the bf16 queries stay exact.
template <class Ahead>
void dot_scores_bf16(const uint32_t* q, int64_t q_stride, int64_t rows, const bf16* k, int64_t k_stride, int64_t D,
                     int64_t nk, float scale, float* HWY_RESTRICT s, int64_t rs, int64_t cs, const Ahead& ahead) {
  const int R = rows == 1 ? 1 : rows == 2 ? 2 : 4, C = 16 / R;
  for (int64_t c0 = 0; c0 < nk; c0 += C)
    for (int64_t r0 = 0; r0 < rows; r0 += R) {
      const uint32_t* q_rows[4];
      const uint16_t* k_rows[16];
      for (int r = 0; r < R; ++r) q_rows[r] = q + std::min<int64_t>(r0 + r, rows - 1) * q_stride;
      for (int c = 0; c < C; ++c) {
        if (r0 == 0 && c0 + c < nk) ahead(c0 + c);
        k_rows[c] = reinterpret_cast<const uint16_t*>(k + std::min<int64_t>(c0 + c, nk - 1) * k_stride);
      }
      alignas(64) float sums[16];
      bf16_dot_block(R, q_rows, k_rows, D, sums);
      for (int r = 0; r < R && r0 + r < rows; ++r)
        for (int c = 0; c < C && c0 + c < nk; ++c) s[(r0 + r) * rs + (c0 + c) * cs] = sums[r * C + c] * scale;
    }
}

// An item's decode rows as decode_scores reads them, rows_out rows (zero past group·n):
// bf16 pairs, unscaled, where use_bf16_dot; scaled f32 rows t.d_vec apart otherwise.
inline void pack_decode_queries(const AttentionParams& p, const TileShape& t, const SequenceSpan& s, int64_t hkv,
                                int64_t i0, int64_t n, int64_t rows_out, float* q) {
  if (use_bf16_dot(p)) {
    const int64_t stride = query_pair_stride(p);
    uint32_t* pairs = reinterpret_cast<uint32_t*>(q);
    std::fill_n(pairs, rows_out * stride, 0u);
    // A bf16 row read as little-endian uint32 already is its pairs (even element low).
    for (int64_t r = 0; r < p.group * n; ++r)
      std::memcpy(pairs + r * stride, static_cast<const uint16_t*>(p.q.data) + item_row_offset(p.q, p, s, hkv, i0, n, r),
                  size_t(p.D) * sizeof(uint16_t));
    return;
  }
  pack_item_rows(p.q, p.D, t.d_vec, p, s, hkv, i0, n, rows_out, q);
  for (int64_t e = 0; e < rows_out * t.d_vec; ++e) q[e] *= p.scale;
}

// Decode scores of keys [j0, j0 + nk) of kv head hkv, read where they lie:
// S[r·rs + c·cs] = scale · q_r · k_c for the first `rows` rows of q (pack_decode_queries).
// The forward, its probs and stats, and the backward all score decode calls here, so P is
// recomputed bit for bit.
// The same for nk key rows at k, k_stride elements apart (the paged cache's runs).
template <typename KT, class Ahead>
void decode_scores_at(const AttentionParams& p, const TileShape& t, int64_t rows, const KT* k, int64_t k_stride,
                      int64_t nk, const float* q, float* out, int64_t rs, int64_t cs, const Ahead& ahead) {
  if constexpr (std::is_same_v<KT, bf16>) {
    if (use_bf16_dot(p)) {
      dot_scores_bf16(reinterpret_cast<const uint32_t*>(q), query_pair_stride(p), rows, k, k_stride, p.D, nk, p.scale,
                      out, rs, cs, ahead);
      return;
    }
  }
  dot_scores(q, t.d_vec, rows, k, k_stride, p.D, nk, out, rs, cs, ahead);
}
template <typename KT, class Ahead>
void decode_scores(const AttentionParams& p, const TileShape& t, const SequenceSpan& s, int64_t hkv, int64_t rows,
                   int64_t j0, int64_t nk, const float* q, float* out, int64_t rs, int64_t cs, const Ahead& ahead) {
  decode_scores_at<KT>(p, t, rows, kv_row<KT>(p.k, s, hkv, j0), p.k.stride_l, nk, q, out, rs, cs, ahead);
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace detail
}  // namespace multihead
HWY_AFTER_NAMESPACE();

#endif  // MULTIHEAD_DECODE_DOTS_INL_H_
