// SIMD forward (Highway: one copy per target, AVX-512 and AVX2 on x86). The same
// math as the portable kernel (flash_forward.cpp), shaped for the machine:
//   - a work item is (sequence, kv head, block of queries) and covers all H / Hkv query
//     heads of the group, so each K/V tile is loaded and converted once per group;
//   - Sᵀ = K Qᵀ and Oᵀ += Vᵀ Pᵀ are register-blocked micro-kernels (simd_tiles-inl.hpp);
//   - the online softmax runs on vectors of rows with Highway's Exp.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/flash_forward_simd.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include <omp.h>

#include "kernels/cpu/simd_tiles-inl.hpp"
#include "kernels/kernels.hpp"

HWY_BEFORE_NAMESPACE();
namespace multihead {
namespace detail {
namespace HWY_NAMESPACE {

namespace {

// One thread's tiles; every tile starts on a 64-byte boundary.
struct ForwardTiles {
  float* q_t;   // D x rows_pad        Qᵀ, scaled
  float* k;     // kTileK x D          K rows
  float* v;     // kTileK x dv_pad     V rows
  float* s_t;   // kTileK x rows_pad   Sᵀ, then Pᵀ
  float* o_t;   // dv_pad x rows_pad   Oᵀ accumulator
  float* m;     // rows_pad            running max
  float* l;     // rows_pad            running sum
  float* corr;  // rows_pad            e^(m_old - m_new)
  float* row;   // max(D, Dv, kTileK)  conversion buffer
};

template <class Take>
ForwardTiles carve(const AttentionParams& p, const TileShape& t, Take take) {
  ForwardTiles w;
  w.q_t = take(p.D * t.rows_pad);
  w.k = take(kTileK * p.D);
  w.v = take(kTileK * t.dv_pad);
  w.s_t = take(kTileK * t.rows_pad);
  w.o_t = take(t.dv_pad * t.rows_pad);
  w.m = take(t.rows_pad);
  w.l = take(t.rows_pad);
  w.corr = take(t.rows_pad);
  w.row = take(std::max({p.D, p.Dv, kTileK}));
  return w;
}

// Online softmax down the key axis of Sᵀ for every row vector:
//   m' = max(m, max_c s);  corr = e^(m - m');  l = l·corr + Σ_c e^(s - m');  Sᵀ <- e^(s - m')
// Rows with nothing allowed so far keep m = -inf, l = 0 and P = 0.
void online_softmax_update(const TileShape& t, float* HWY_RESTRICT s_t, float* HWY_RESTRICT m,
                           float* HWY_RESTRICT l, float* HWY_RESTRICT corr) {
  const FloatTag d;
  const int64_t N = row_vector();
  const auto neg_inf = hn::Set(d, kNegInf);
  for (int64_t r = 0; r < t.rows_pad; r += N) {
    const auto m_old = hn::Load(d, m + r);
    auto tile_max = neg_inf;
    for (int64_t c = 0; c < kTileK; ++c) tile_max = hn::Max(tile_max, hn::Load(d, s_t + c * t.rows_pad + r));
    const auto m_new = hn::Max(m_old, tile_max);
    const auto m_safe = hn::IfThenZeroElse(hn::Eq(m_new, neg_inf), m_new);  // -inf - -inf is NaN
    auto sum = hn::Zero(d);
    for (int64_t c = 0; c < kTileK; ++c) {
      float* at = s_t + c * t.rows_pad + r;
      const auto x = hn::Load(d, at);
      const auto e = hn::IfThenElseZero(hn::Ne(x, neg_inf), hn::Exp(d, hn::Sub(x, m_safe)));
      hn::Store(e, d, at);
      sum = hn::Add(sum, e);
    }
    const auto c = hn::IfThenElseZero(hn::Ne(m_old, neg_inf), hn::Exp(d, hn::Sub(m_old, m_safe)));
    hn::Store(hn::MulAdd(hn::Load(d, l + r), c, sum), d, l + r);
    hn::Store(m_new, d, m + r);
    hn::Store(c, d, corr + r);
  }
}

// Oᵀ[a, :] *= corr for every output dim a.
void rescale_output(const TileShape& t, const float* HWY_RESTRICT corr, float* HWY_RESTRICT o_t) {
  const FloatTag d;
  const int64_t N = row_vector();
  for (int64_t a = 0; a < t.dv_pad; ++a)
    for (int64_t r = 0; r < t.rows_pad; r += N) {
      float* at = o_t + a * t.rows_pad + r;
      hn::Store(hn::Mul(hn::Load(d, at), hn::Load(d, corr + r)), d, at);
    }
}

void forward_item(const AttentionParams& p, const TileShape& t, const WorkItem& item, const ForwardTiles& w) {
  const SequenceSpan& s = p.seqs[size_t(item.seq)];
  const int64_t hkv = item.head, i0 = item.begin, n = item.end - item.begin;
  const int64_t rows = p.group * n;  // row r: head hkv·group + r / n, query i0 + r % n
  pack_queries_t(p, s, hkv, i0, n, t, w.row, w.q_t);
  std::fill_n(w.m, t.rows_pad, kNegInf);
  std::fill_n(w.l, t.rows_pad, 0.0f);
  std::fill_n(w.o_t, t.dv_pad * t.rows_pad, 0.0f);

  const int64_t j_begin = key_range(p, s, i0).lo, j_end = key_range(p, s, i0 + n - 1).hi;
  for (int64_t j0 = j_begin; j0 < j_end; j0 += kTileK) {
    const int64_t nk = std::min(kTileK, j_end - j0);
    pack_rows(p.k, s, hkv, j0, nk, p.D, p.D, w.k);
    pack_rows(p.v, s, hkv, j0, nk, p.Dv, t.dv_pad, w.v);
    scores_t(w.q_t, w.k, p.D, p.D, t, w.s_t);
    modify_scores(p, s, hkv, i0, n, j0, nk, t, w.s_t);
    online_softmax_update(t, w.s_t, w.m, w.l, w.corr);
    rescale_output(t, w.corr, w.o_t);
    if (p.dropout_p > 0.0f)  // dropout acts on P·V only: l keeps every weight
      for (int64_t r = 0; r < rows; ++r) {
        dropout_row(p, s, hkv * p.group + r / n, i0 + r % n, j0, nk, w.row);
        for (int64_t c = 0; c < nk; ++c) w.s_t[c * t.rows_pad + r] *= w.row[c];
      }
    if (p.mask.data || p.bias.data) zero_unattended_rows(w.s_t, nk, t, w.v, t.dv_pad);
    // Oᵀ += Vᵀ Pᵀ
    outer_product(w.s_t, t.rows_pad, w.v, 1, t.dv_pad, nk, t.dv_pad, t.rows_pad, w.o_t, true);
  }

  // out = o / l and lse = m + log l, with the sink's e^(sink - m) in l. A row with no
  // allowed key gives out 0 and lse -inf, with or without a sink.
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t h = hkv * p.group + r / n, i = i0 + r % n;
    float lse = kNegInf, inv_l = 0.0f;
    if (w.m[r] != kNegInf) {
      const float sink = sink_logit(p, h);
      float m = w.m[r], l = w.l[r];
      if (sink != kNegInf) {
        const float m_new = std::max(m, sink);
        l = l * std::exp(m - m_new) + std::exp(sink - m_new);
        inv_l = std::exp(m - m_new) / l;
        m = m_new;
      } else {
        inv_l = 1.0f / l;
      }
      lse = m + std::log(l);
      for (int64_t a = 0; a < p.Dv; ++a) w.row[a] = w.o_t[a * t.rows_pad + r];
    } else {
      std::fill_n(w.row, p.Dv, 0.0f);
    }
    store_row(p.out.data, p.out.dtype,
              s.batch * p.out.stride_b + (s.q_begin + i) * p.out.stride_l + h * p.out.stride_h, p.Dv, w.row, inv_l);
    if (p.lse) *lse_ptr(p, s, h, i) = lse;
  }

  if (!p.probs) return;
  // probs = exp(s - lse) over every key column, recomputed from the final lse.
  for (int64_t j0 = 0; j0 < p.Lk; j0 += kTileK) {
    const int64_t nk = std::min(kTileK, p.Lk - j0);
    const int64_t nk_valid = std::clamp<int64_t>(s.k_len - j0, 0, nk);  // keys past k_len read nothing
    pack_rows(p.k, s, hkv, j0, nk_valid, p.D, p.D, w.k);
    scores_t(w.q_t, w.k, p.D, p.D, t, w.s_t);
    modify_scores(p, s, hkv, i0, n, j0, nk_valid, t, w.s_t);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t h = hkv * p.group + r / n, i = i0 + r % n;
      const float lse = *lse_ptr(p, s, h, i);
      float* dst = p.probs + s.batch * p.probs_stride_b + h * p.probs_stride_h + i * p.probs_stride_i;
      for (int64_t c = 0; c < nk; ++c) {
        const float sc = w.s_t[c * t.rows_pad + r];
        dst[(j0 + c) * p.probs_stride_j] = (sc == kNegInf || lse == kNegInf) ? 0.0f : std::exp(sc - lse);
      }
    }
  }
}

}  // namespace

int64_t ForwardSimdScratchFloats(const AttentionParams& p) {
  const TileShape t = tile_shape(p);
  int64_t total = 0;
  carve(p, t, [&](int64_t n) {
    total += round_up(n, 16);
    return nullptr;
  });
  return total;
}

void FlashForwardSimd(const AttentionParams& p, float* scratch, int64_t scratch_per_thread) {
  const TileShape t = tile_shape(p);
  const int64_t count = int64_t(p.group_items.size());
#pragma omp parallel num_threads(p.num_threads)
  {
    float* at = scratch + omp_get_thread_num() * scratch_per_thread;
    const ForwardTiles w = carve(p, t, [&](int64_t n) {
      float* r = at;
      at += round_up(n, 16);
      return r;
    });
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < count; ++it) forward_item(p, t, p.group_items[size_t(it)], w);
  }
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace detail
}  // namespace multihead
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace multihead::detail {
HWY_EXPORT(FlashForwardSimd);
HWY_EXPORT(ForwardSimdScratchFloats);

void flash_forward_simd(const AttentionParams& p, float* scratch, int64_t scratch_per_thread) {
  HWY_DYNAMIC_DISPATCH(FlashForwardSimd)(p, scratch, scratch_per_thread);
}
int64_t forward_simd_scratch_floats(const AttentionParams& p) {
  return HWY_DYNAMIC_DISPATCH(ForwardSimdScratchFloats)(p);
}
}  // namespace multihead::detail
#endif
