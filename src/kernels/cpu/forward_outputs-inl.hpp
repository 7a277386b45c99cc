// What the SIMD forward writes (re-included once per Highway target; included by
// flash_forward_simd.cpp only): out and lse from an item's running state, and the
// optional probabilities and per-head statistics, recomputed from the final lse with the
// forward's own scores.
#if defined(MULTIHEAD_FORWARD_OUTPUTS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MULTIHEAD_FORWARD_OUTPUTS_INL_H_
#undef MULTIHEAD_FORWARD_OUTPUTS_INL_H_
#else
#define MULTIHEAD_FORWARD_OUTPUTS_INL_H_
#endif

#include <cstring>

#include <hwy/cache_control.h>
#include <hwy/highway.h>

#include "kernels/cpu/forward_tiles-inl.hpp"
#include "kernels/cpu/simd_tiles-inl.hpp"

HWY_BEFORE_NAMESPACE();
namespace multihead {
namespace detail {
namespace HWY_NAMESPACE {
namespace {

// out = o / l and lse (finish_row) for every row of an item. Oᵀ (the tiled layout) comes
// back to rows 16 at a time through o_rows (16 x dv_vec).
void finalize(const AttentionParams& p, const TileShape& t, const SequenceSpan& s, int64_t hkv, int64_t i0,
              int64_t n, const float* m_run, const float* l_run, const float* o, OutputLayout layout,
              float* o_rows) {
  const FloatTag d;
  const bool stream = p.stream_output;  // planner: f32, whole vectors, >= kStreamOutputBytes
  const int64_t rows = p.group * n;
  for (int64_t r0 = 0; r0 < rows; r0 += 16) {
    const float* block = o + r0 * layout.row_stride;
    int64_t block_stride = layout.row_stride;
    if (layout.col_stride != 1) {
      transpose_columns16(o + r0, layout.col_stride, p.Dv, o_rows, t.dv_vec);
      block = o_rows, block_stride = t.dv_vec;
    }
    for (int64_t r = r0; r < std::min(r0 + 16, rows); ++r) {
      const int64_t h = hkv * p.group + r / n, i = i0 + r % n;
      const RowResult result = finish_row(m_run[r], l_run[r], sink_logit(p, h));
      if (p.lse) *lse_ptr(p, s, h, i) = result.lse;
      // a row with no allowed key is 0, whatever 0 · garbage left in its accumulator
      const float* src = row_is_empty(m_run[r], l_run[r]) ? nullptr : block + (r - r0) * block_stride;
      const int64_t offset = s.batch * p.out.stride_b + (s.q_begin + i) * p.out.stride_l + h * p.out.stride_h;
      if (stream) {
        float* dst = static_cast<float*>(p.out.data) + offset;
        const auto factor = hn::Set(d, result.out_factor);
        for (int64_t a = 0; a < p.Dv; a += row_vector())
          hn::Stream(src ? hn::Mul(hn::LoadU(d, src + a), factor) : hn::Zero(d), d, dst + a);
      } else if (src) {
        store_row(p.out.data, p.out.dtype, offset, p.Dv, src, result.out_factor);
      } else {  // +0 is all zero bits in f32, bf16 and f16
        const size_t size = dtype_size(p.out.dtype);
        std::memset(static_cast<char*>(p.out.data) + offset * int64_t(size), 0, size_t(p.Dv) * size);
      }
    }
  }
  if (stream) hwy::FlushStream();  // order the streamed rows before the thread's later work
}

// The forward's own scores of an item (either path) for keys [j0, j0 + nk) into Sᵀ, so
// that exp(s - lse) is consistent with lse; queries packed by pack_rescore_queries.
void pack_rescore_queries(const AttentionParams& p, const TileShape& t, const SequenceSpan& s, int64_t hkv,
                          int64_t i0, int64_t n, const ForwardTiles& w) {
  if (p.decode) {
    pack_decode_queries(p, t, s, hkv, i0, n, p.group * n, w.q);
  } else {
    pack_queries_t(p, s, hkv, i0, n, t, w.row, w.q_t);
  }
}
void rescore(const AttentionParams& p, const TileShape& t, const SequenceSpan& s, int64_t hkv, int64_t i0,
             int64_t n, int64_t j0, int64_t nk, const ForwardTiles& w) {
  if (p.decode) {
    with_float_type(p.k.dtype, [&](auto k_type) {
      decode_scores<typename decltype(k_type)::type>(p, t, s, hkv, p.group * n, j0, nk, w.q, w.s_t, 1, t.rows_pad,
                                                     [](int64_t) {});
    });
  } else {
    pack_rows(p.k, s, hkv, j0, nk, p.D, t.d_vec, w.k);
    scores_t(w.q_t, w.k, t.d_vec, p.D, t, w.s_t);
  }
  modify_scores(p, s, hkv, i0, n, j0, nk, t, w.s_t);
}

// Per-head statistics of every row of an item (RowStats per row, keys in order).
void write_stats(const AttentionParams& p, const TileShape& t, const SequenceSpan& s, int64_t hkv, int64_t i0,
                 int64_t n, const ForwardTiles& w) {
  const int64_t rows = p.group * n;
  RowStats* stats = reinterpret_cast<RowStats*>(w.stats);
  for (int64_t r = 0; r < rows; ++r) stats[r] = RowStats{};
  pack_rescore_queries(p, t, s, hkv, i0, n, w);
  const int64_t j_begin = first_tile(p, s, i0), j_end = key_range(p, s, i0 + n - 1).hi;
  for (int64_t j0 = j_begin; j0 < j_end; j0 += kTileK) {
    const int64_t nk = std::min(kTileK, j_end - j0);
    rescore(p, t, s, hkv, i0, n, j0, nk, w);
    for (int64_t r = 0; r < rows; ++r) {
      const float lse = *lse_ptr(p, s, hkv * p.group + r / n, i0 + r % n);
      for (int64_t c = 0; c < nk; ++c) stats[r].add(w.s_t[c * t.rows_pad + r], lse, j0 + c);
    }
  }
  // The extra keys after the input keys (keys in order): key k_extra_begin + c.
  const SequenceSpan es = extra_span(s);
  for (int64_t j0 = 0; j0 < s.k_extra; j0 += kTileK) {
    const int64_t nk = std::min(kTileK, s.k_extra - j0);
    rescore(p, t, es, hkv, i0, n, j0, nk, w);
    for (int64_t r = 0; r < rows; ++r) {
      const float lse = *lse_ptr(p, s, hkv * p.group + r / n, i0 + r % n);
      for (int64_t c = 0; c < nk; ++c) stats[r].add(w.s_t[c * t.rows_pad + r], lse, s.k_extra_begin + j0 + c);
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t h = hkv * p.group + r / n, i = i0 + r % n;
    store_row_stats(p, s, h, i, stats[r], *lse_ptr(p, s, h, i));
  }
}

// probs = exp(s - lse) over every key column, recomputed from the final lse: columns
// [0, k_extra_begin) from the input keys (0 past k_len), the rest from the extra keys on
// extra_span (probs[i, k_extra_begin + c] = exp(s_ic - lse_i) for every row).
void write_probs(const AttentionParams& p, const TileShape& t, const SequenceSpan& s, int64_t hkv, int64_t i0,
                 int64_t n, const ForwardTiles& w) {
  const int64_t rows = p.group * n;
  pack_rescore_queries(p, t, s, hkv, i0, n, w);
  const auto columns = [&](const SequenceSpan& span, int64_t col0, int64_t j_end) {
    for (int64_t j0 = 0; j0 < j_end; j0 += kTileK) {
      const int64_t nk = std::min(kTileK, j_end - j0);
      const int64_t nk_valid = std::clamp<int64_t>(span.k_len - j0, 0, nk);  // keys past k_len read nothing
      rescore(p, t, span, hkv, i0, n, j0, nk_valid, w);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t h = hkv * p.group + r / n, i = i0 + r % n;
        const float lse = *lse_ptr(p, s, h, i);
        float* dst = p.probs + s.batch * p.probs_stride_b + h * p.probs_stride_h + i * p.probs_stride_i;
        for (int64_t c = 0; c < nk; ++c) {
          const float sc = w.s_t[c * t.rows_pad + r];
          dst[(col0 + j0 + c) * p.probs_stride_j] = (sc == kNegInf || lse == kNegInf) ? 0.0f : std::exp(sc - lse);
        }
      }
    }
  };
  columns(s, 0, s.k_extra_begin);
  if (s.k_extra > 0) columns(extra_span(s), s.k_extra_begin, s.k_extra);
}

}  // namespace
// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace detail
}  // namespace multihead
HWY_AFTER_NAMESPACE();

#endif  // MULTIHEAD_FORWARD_OUTPUTS_INL_H_
