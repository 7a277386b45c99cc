// The score modifiers on the SIMD tiles, forward and backward (re-included once per
// Highway target). Every element goes through the one definition of score_modifiers.hpp
// (apply_score_modifiers, softcap_backward), so the SIMD and portable kernels, forward and
// backward, modify scores alike; this unit applies it to Sᵀ columns of an item, skips
// the tiles that need nothing, and reduces dS into d(bias).
#if defined(MULTIHEAD_SCORE_MODIFIERS_SIMD_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MULTIHEAD_SCORE_MODIFIERS_SIMD_INL_H_
#undef MULTIHEAD_SCORE_MODIFIERS_SIMD_INL_H_
#else
#define MULTIHEAD_SCORE_MODIFIERS_SIMD_INL_H_
#endif

#include <algorithm>

#include <hwy/highway.h>

#include "kernels/cpu/score_modifiers.hpp"
#include "kernels/cpu/simd_common-inl.hpp"

HWY_BEFORE_NAMESPACE();
namespace multihead {
namespace detail {
namespace HWY_NAMESPACE {

// True when no column of the tile needs more than the scale (the planner's scores_plain:
// no softcap, bias, ALiBi, mask) and every row sees every key [j0, j0 + kTileK): the
// common interior tile.
inline bool tile_is_plain(const AttentionParams& p, const SequenceSpan& s, int64_t i0, int64_t n, int64_t j0,
                          int64_t nk) {
  if (nk != kTileK || !p.scores_plain) return false;
  const IndexRange first = key_range(p, s, i0), last = key_range(p, s, i0 + n - 1);
  return last.lo <= j0 && first.hi >= j0 + kTileK;
}

// Forward: every Sᵀ column r of an item (query i0 + r % n of head hkv·group + r / n) for
// keys [j0, j0 + kTileK) gets the modifiers (tile padding past nk -inf); padded rows
// become -inf.
inline void modify_scores(const AttentionParams& p, const SequenceSpan& s, int64_t hkv, int64_t i0, int64_t n,
                          int64_t j0, int64_t nk, const TileShape& t, float* s_t) {
  const int64_t rows = p.group * n;
  if (!tile_is_plain(p, s, i0, n, j0, nk))
    for (int64_t r = 0; r < rows; ++r)
      apply_score_modifiers(p, s, hkv * p.group + r / n, i0 + r % n, j0, nk, kTileK, s_t + r, t.rows_pad);
  for (int64_t c = 0; c < kTileK; ++c) std::fill(s_t + c * t.rows_pad + rows, s_t + (c + 1) * t.rows_pad, kNegInf);
}

// Backward, softcap: dSᵀ <- dS'ᵀ through the softcap's chain rule, from the raw scores
// (scale·QKᵀ) of the whole tile.
inline void softcap_backward_tile(const AttentionParams& p, const TileShape& t, const float* raw_t, float* ds_t) {
  softcap_backward(p.softcap, raw_t, ds_t, kTileK * t.rows_pad);
}

// Backward, bias: d(bias) += dS for column r of dSᵀ (keys [0, nk)) into one row of the
// dbias tensor (entries stride_j apart), or into its single entry when the key dim is
// reduced; keys in order, so the sum's order is fixed.
inline void add_dbias_column(const float* ds_col, int64_t rows_pad, int64_t nk, float* dbias_row, int64_t stride_j,
                             bool reduce_j) {
  if (reduce_j) {
    float& sum = *dbias_row;
    for (int64_t c = 0; c < nk; ++c) sum += ds_col[c * rows_pad];
    return;
  }
  for (int64_t c = 0; c < nk; ++c) dbias_row[c * stride_j] += ds_col[c * rows_pad];
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace detail
}  // namespace multihead
HWY_AFTER_NAMESPACE();

#endif  // MULTIHEAD_SCORE_MODIFIERS_SIMD_INL_H_
