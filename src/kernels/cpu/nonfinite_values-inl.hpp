// Non-finite V values against zero weights (re-included once per Highway target). A key
// whose P is 0 for a row adds nothing to that row (docs/CONTRACT.md, "Non-finite inputs"),
// but P·V as a tile product computes 0 · inf = NaN there. Where a tile has such a key and
// its V row holds a NaN or inf, that value is taken out of the (packed) tile, 0 in its
// place, and added back, P · v, to the rows whose P is not 0: their sums are non-finite
// in any order, and every other row gets exactly the product of finite values.
#if defined(MULTIHEAD_NONFINITE_VALUES_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MULTIHEAD_NONFINITE_VALUES_INL_H_
#undef MULTIHEAD_NONFINITE_VALUES_INL_H_
#else
#define MULTIHEAD_NONFINITE_VALUES_INL_H_
#endif

#include <cmath>

#include <hwy/highway.h>

#include "kernels/cpu/decode_dots-inl.hpp"
#include "kernels/cpu/simd_common-inl.hpp"
#include "kernels/cpu/tile_packing-inl.hpp"

HWY_BEFORE_NAMESPACE();
namespace multihead {
namespace detail {
namespace HWY_NAMESPACE {

// Whether some P[r·rs + c·cs], r < rows, c < nk, is 0. One of the strides is 1 (row-major
// decode scores, transposed tiled ones): vectors run along it, since the paths ask once
// per tile.
inline bool any_zero_weight(const float* p, int64_t rows, int64_t nk, int64_t rs, int64_t cs) {
  const bool along_keys = cs == 1;
  const int64_t lines = along_keys ? rows : nk, length = along_keys ? nk : rows, stride = along_keys ? rs : cs;
  const FloatTag d;
  const int64_t N = row_vector();
  for (int64_t line = 0; line < lines; ++line) {
    const float* x = p + line * stride;
    int64_t e = 0;
    for (; e + N <= length; e += N)
      if (!hn::AllFalse(d, hn::Eq(hn::LoadU(d, x + e), hn::Zero(d)))) return true;
    for (; e < length; ++e)
      if (x[e] == 0.0f) return true;
  }
  return false;
}

// Whether some element of row[0, n) is NaN or ±inf: x - x is +0 for finite x and NaN
// otherwise, so one OR of the differences tells.
template <typename T>
inline bool row_nonfinite(const T* row, int64_t n) {
  const FloatTag d;
  const int64_t N = row_vector();
  auto acc = hn::Zero(d);
  int64_t x = 0;
  for (; x + N <= n; x += N) {
    const auto v = load_widened(row, x);
    acc = hn::Or(acc, hn::Sub(v, v));
  }
  if (!hn::AllFalse(d, hn::IsNaN(acc))) return true;
  for (; x < n; ++x)
    if (!std::isfinite(widen(row[x]))) return true;
  return false;
}

// Keys [0, nk) of a tile: v_row(c) their V rows as they lie (of T), `packed` the f32 rows
// the product will read (stride packed_stride; for every key that needs it the caller has
// packed them first: needs_packing below), P[r·rs + c·cs] and O[r·o_rs + a·o_as] for rows
// [0, rows). Moves the non-finite values of keys that some row weighs 0 out of `packed`
// and into O of the rows that weigh them.
inline void move_nonfinite_values(const float* p, int64_t rows, int64_t nk, int64_t rs, int64_t cs, float* packed,
                                  int64_t packed_stride, int64_t Dv, float* o, int64_t o_rs, int64_t o_as) {
  for (int64_t c = 0; c < nk; ++c) {
    float* vc = packed + c * packed_stride;
    if (!row_nonfinite(vc, Dv)) continue;
    for (int64_t a = 0; a < Dv; ++a) {
      if (std::isfinite(vc[a])) continue;
      for (int64_t r = 0; r < rows; ++r) {
        const float pr = p[r * rs + c * cs];
        if (pr != 0.0f) o[r * o_rs + a * o_as] += pr * vc[a];
      }
      vc[a] = 0.0f;
    }
  }
}

// Whether a tile needs move_nonfinite_values: some row weighs a key 0 whose V row (v_row(c),
// as it lies) holds a non-finite value.
template <typename T, class VRow>
bool tile_needs_value_guard(const float* p, int64_t rows, int64_t nk, int64_t rs, int64_t cs, int64_t Dv,
                            const VRow& v_row) {
  if constexpr (std::is_same_v<T, int8_t>) {
    return false;  // an int8 cache holds finite values only (KvCache::append checks)
  } else {
    if (!any_zero_weight(p, rows, nk, rs, cs)) return false;
    for (int64_t c = 0; c < nk; ++c) {
      bool weighed_zero = false;
      for (int64_t r = 0; r < rows && !weighed_zero; ++r) weighed_zero = p[r * rs + c * cs] == 0.0f;
      if (weighed_zero && row_nonfinite(v_row(c), Dv)) return true;
    }
    return false;
  }
}

// Backward: whether a key that no row attends (its dSᵀ column all 0) has a NaN or inf in
// its K row (k_stride apart): dQ += dS K would then compute 0 · inf.
inline bool unattended_keys_nonfinite(const float* ds_t, int64_t nk, const TileShape& t, const float* k,
                                      int64_t k_stride, int64_t D) {
  for (int64_t c = 0; c < nk; ++c)
    if (key_unattended(ds_t, c, t) && row_nonfinite(k + c * k_stride, D)) return true;
  return false;
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace detail
}  // namespace multihead
HWY_AFTER_NAMESPACE();

#endif  // MULTIHEAD_NONFINITE_VALUES_INL_H_
