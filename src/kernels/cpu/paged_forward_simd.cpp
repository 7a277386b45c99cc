// SIMD forward over the paged KV cache (Highway: one copy per target, AVX-512 and AVX2 on
// x86). A work item is (sequence, kv head, query rows) for every query head of the group
// (paged_common.hpp): each key tile (keys of one block, contiguous per kv head) is read
// from the pool where it lies, once for the whole group, and bf16 and int8 elements are
// widened in registers (int8: value = scale · q per token and kv head); nothing is
// expanded in memory. Scores are dot products along D, the online softmax is the decode
// path's (online_softmax_row), P·V runs along Dv. Decode calls with few heads split their
// keys into chunks merged by LSE (run_paged, merge_partials).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/paged_forward_simd.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include <type_traits>

#include "kernels/cpu/online_softmax-inl.hpp"
#include "kernels/cpu/paged_common.hpp"
#include "kernels/cpu/score_modifiers.hpp"
#include "kernels/cpu/simd_common-inl.hpp"
#include "kernels/kernels.hpp"

HWY_BEFORE_NAMESPACE();
namespace multihead {
namespace detail {
namespace HWY_NAMESPACE {

namespace {

// Elements [x, x + N) of a stored row as one f32 vector: f32 as is, bf16 widened exactly,
// int8 converted and multiplied by the row's scale (the value gather() gives).
template <typename T>
HWY_INLINE hn::Vec<FloatTag> load_stored(const T* HWY_RESTRICT row, int64_t x, float scale) {
  const FloatTag d;
  if constexpr (std::is_same_v<T, float>) {
    (void)scale;
    return hn::LoadU(d, row + x);
  } else if constexpr (std::is_same_v<T, bf16>) {
    (void)scale;
    const hn::Rebind<hwy::bfloat16_t, FloatTag> dh;
    return hn::PromoteTo(d, hn::LoadU(dh, reinterpret_cast<const hwy::bfloat16_t*>(row) + x));
  } else {
    const hn::Rebind<int8_t, FloatTag> d8;
    const hn::Rebind<int32_t, FloatTag> d32;
    return hn::Mul(hn::Set(d, scale), hn::ConvertTo(d, hn::PromoteTo(d32, hn::LoadU(d8, row + x))));
  }
}
template <typename T>
HWY_INLINE float stored_scalar(const T* row, int64_t x, float scale) {
  if constexpr (std::is_same_v<T, float>) return row[x];
  else if constexpr (std::is_same_v<T, bf16>) return bf16_to_float(row[x]);
  else return scale * float(row[x]);
}

// S[r, c] = scale · Σ_d q[r, d] · k_c[d] for R rows and keys [0, nk): each key's vectors
// are widened once per block of R rows and feed R independent accumulators.
template <int R, typename T>
HWY_INLINE void dot_rows(const PagedParams& p, const float* HWY_RESTRICT q, const T* HWY_RESTRICT k,
                         const float* k_scales, int64_t nk, float* HWY_RESTRICT s) {
  const FloatTag d;
  const int64_t N = row_vector(), full = p.D / N * N;
  for (int64_t c = 0; c < nk; ++c) {
    const T* kc = k + c * p.D;
    const float ks = k_scales ? k_scales[c] : 0.0f;
    hn::Vec<FloatTag> acc[R];
    for (int r = 0; r < R; ++r) acc[r] = hn::Zero(d);
    for (int64_t x = 0; x < full; x += N) {
      const auto kv = load_stored(kc, x, ks);
      for (int r = 0; r < R; ++r) acc[r] = hn::MulAdd(hn::LoadU(d, q + r * p.D + x), kv, acc[r]);
    }
    for (int r = 0; r < R; ++r) {
      float sum = hn::GetLane(hn::SumOfLanes(d, acc[r]));
      for (int64_t x = full; x < p.D; ++x) sum = std::fma(q[r * p.D + x], stored_scalar(kc, x, ks), sum);
      s[r * kTileK + c] = sum * p.scale;
    }
  }
}

// O[r, a] += Σ_c P[r, c] · v_c[a] for R rows over dims [0, Dv); keys no row attends
// (attended[c] == 0) are skipped, so a masked key's values never meet a 0 weight.
template <int R, typename T>
HWY_INLINE void weigh_rows(const PagedParams& p, const float* HWY_RESTRICT P, const T* HWY_RESTRICT v,
                           const float* v_scales, const uint8_t* attended, int64_t nk, float* HWY_RESTRICT o) {
  const FloatTag d;
  const int64_t N = row_vector(), full = p.Dv / N * N;
  for (int64_t a = 0; a < full; a += N) {
    hn::Vec<FloatTag> acc[R];
    for (int r = 0; r < R; ++r) acc[r] = hn::LoadU(d, o + r * p.Dv + a);
    for (int64_t c = 0; c < nk; ++c) {
      if (!attended[c]) continue;
      const auto vc = load_stored(v + c * p.Dv, a, v_scales ? v_scales[c] : 0.0f);
      for (int r = 0; r < R; ++r) acc[r] = hn::MulAdd(hn::Set(d, P[r * kTileK + c]), vc, acc[r]);
    }
    for (int r = 0; r < R; ++r) hn::StoreU(acc[r], d, o + r * p.Dv + a);
  }
  for (int64_t a = full; a < p.Dv; ++a)
    for (int r = 0; r < R; ++r) {
      float sum = o[r * p.Dv + a];
      for (int64_t c = 0; c < nk; ++c)
        if (attended[c]) sum = std::fma(P[r * kTileK + c], stored_scalar(v + c * p.Dv, a, v_scales ? v_scales[c] : 0.0f), sum);
      o[r * p.Dv + a] = sum;
    }
}

// Calls f.template operator()<R>(r) over rows [0, rows) in blocks of up to 4.
template <class F>
HWY_INLINE void row_blocks(int64_t rows, F&& f) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) f.template operator()<4>(r);
  switch (rows - r) {
    case 3: f.template operator()<3>(r); break;
    case 2: f.template operator()<2>(r); break;
    case 1: f.template operator()<1>(r); break;
    default: break;
  }
}

// Keys [keys.lo, keys.hi) of an item, one tile (keys of one block) at a time:
//   S = scale · Q Kᵀ, then the modifiers (softcap, ALiBi, window/causal, -inf past nk)
//   m' = max(m, max_c S);  l = l·e^(m - m') + Σ_c e^(S - m');  O = O·e^(m - m') + P V
template <typename T>
void accumulate_typed(const PagedParams& p, const WorkItem& item, IndexRange keys, float* m, float* l, float* o,
                      const PagedScratch& w) {
  const SequenceSpan& s = p.seqs[size_t(item.seq)];
  const int64_t n = item.end - item.begin, rows = p.group * n;
  uint8_t attended[kTileK];
  pack_paged_queries(p, item, w.q);
  for (int64_t j0 = keys.lo; j0 < keys.hi; j0 += p.keys_per_tile) {
    const int64_t nk = std::min(p.keys_per_tile, keys.hi - j0);
    const PagedTile tile = paged_tile(p, item.seq, item.head, j0);
    const T* k = reinterpret_cast<const T*>(tile.k);
    const T* v = reinterpret_cast<const T*>(tile.v);
    row_blocks(rows, [&]<int R>(int64_t r) { dot_rows<R>(p, w.q + r * p.D, k, tile.k_scales, nk, w.s + r * kTileK); });
    std::fill_n(attended, kTileK, uint8_t(0));
    for (int64_t r = 0; r < rows; ++r) {
      float* srow = w.s + r * kTileK;
      apply_score_modifiers(p, s, item.head * p.group + r / n, item.begin + r % n, j0, nk, kTileK, srow, 1);
      const float correction = online_softmax_row(srow, m[r], l[r]);
      if (correction != 1.0f)
        for (int64_t a = 0; a < p.Dv; ++a) o[r * p.Dv + a] *= correction;
      for (int64_t c = 0; c < nk; ++c) attended[c] |= srow[c] != 0.0f;
    }
    row_blocks(rows, [&]<int R>(int64_t r) {
      weigh_rows<R>(p, w.s + r * kTileK, v, tile.v_scales, attended, nk, o + r * p.Dv);
    });
  }
}

}  // namespace

void PagedForwardSimd(const PagedParams& p, float* scratch, int64_t scratch_per_thread) {
  run_paged(p, scratch, scratch_per_thread,
            [&](const WorkItem& item, IndexRange keys, float* m, float* l, float* o, const PagedScratch& w) {
              switch (p.paged_cache.dtype) {
                case KvCacheDType::kBF16: accumulate_typed<bf16>(p, item, keys, m, l, o, w); break;
                case KvCacheDType::kI8: accumulate_typed<int8_t>(p, item, keys, m, l, o, w); break;
                default: accumulate_typed<float>(p, item, keys, m, l, o, w); break;
              }
            });
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace detail
}  // namespace multihead
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace multihead::detail {
HWY_EXPORT(PagedForwardSimd);

void paged_forward_simd(const PagedParams& p, float* scratch, int64_t scratch_per_thread) {
  HWY_DYNAMIC_DISPATCH(PagedForwardSimd)(p, scratch, scratch_per_thread);
}
}  // namespace multihead::detail
#endif
