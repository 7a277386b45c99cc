// Tile primitives shared by the forward and backward kernels: conversions, key and query
// ranges, tile loads, dropout factors, the end of a row's softmax and per-head statistics.
// The score modifiers are score_modifiers.hpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "kernels/params.hpp"
#include "core/dropout.hpp"

namespace multihead::detail {

inline constexpr float kNegInf = -std::numeric_limits<float>::infinity();

inline constexpr int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

inline float load_float(const void* base, DType dtype, int64_t offset) {
  switch (dtype) {
    case DType::kF32: return static_cast<const float*>(base)[offset];
    case DType::kBF16: return bf16_to_float(static_cast<const bf16*>(base)[offset]);
    case DType::kF16: return f16_to_float(static_cast<const f16*>(base)[offset]);
    default: return 0.0f;
  }
}

// dst[0..n) = row at base + offset, converted to f32.
inline void load_row(const void* base, DType dtype, int64_t offset, int64_t n, float* dst) {
  switch (dtype) {
    case DType::kF32: std::copy_n(static_cast<const float*>(base) + offset, n, dst); break;
    case DType::kBF16: {
      const bf16* src = static_cast<const bf16*>(base) + offset;
      for (int64_t d = 0; d < n; ++d) dst[d] = bf16_to_float(src[d]);
      break;
    }
    case DType::kF16: {
      const f16* src = static_cast<const f16*>(base) + offset;
      for (int64_t d = 0; d < n; ++d) dst[d] = f16_to_float(src[d]);
      break;
    }
    default: break;
  }
}

inline void store_row(void* base, DType dtype, int64_t offset, int64_t n, const float* src, float mul) {
  switch (dtype) {
    case DType::kF32: {
      float* dst = static_cast<float*>(base) + offset;
      for (int64_t d = 0; d < n; ++d) dst[d] = src[d] * mul;
      break;
    }
    case DType::kBF16: {
      bf16* dst = static_cast<bf16*>(base) + offset;
      for (int64_t d = 0; d < n; ++d) dst[d] = float_to_bf16(src[d] * mul);
      break;
    }
    case DType::kF16: {
      f16* dst = static_cast<f16*>(base) + offset;
      for (int64_t d = 0; d < n; ++d) dst[d] = float_to_f16(src[d] * mul);
      break;
    }
    default: break;
  }
}

// A half-open range [lo, hi) of key indices (key_range) or query rows (query_range).
struct IndexRange {
  int64_t lo, hi;
};
// Keys that query row i of a sequence may see before masks and biases.
inline IndexRange key_range(const ScoreModifiers& p, const SequenceSpan& s, int64_t i) {
  if (s.unmasked) return {0, s.k_len};  // extra keys: every query sees them all
  const int64_t diag = i + s.kv_offset;
  int64_t lo = 0, hi = s.k_len;
  // Clamped to [0, k_len]: a window may lie wholly past the last key.
  if (p.window_left >= 0) lo = std::min(std::max(lo, diag - p.window_left), s.k_len);
  if (p.window_right >= 0) hi = std::min(hi, diag + p.window_right + 1);
  return {lo, std::max(lo, hi)};
}

// Query rows [begin, end) that see at least one key of [j0, j1) (rows are monotone).
inline IndexRange query_range(const ScoreModifiers& p, const SequenceSpan& s, int64_t j0, int64_t j1) {
  int64_t begin = 0, end = s.q_len;
  if (s.unmasked) return {begin, end};  // extra keys: every query sees them
  // Clamped to [0, q_len]: the keys may lie past every row's window.
  if (p.window_right >= 0) begin = std::min(std::max(begin, j0 - s.kv_offset - p.window_right), s.q_len);
  if (p.window_left >= 0) end = std::min(end, j1 - s.kv_offset + p.window_left);
  return {begin, std::max(begin, end)};
}

// Q rows [i0, i0+n) of head h into q_tile (n x D).
inline void load_q_tile(const AttentionParams& p, const SequenceSpan& s, int64_t h, int64_t i0,
                        int64_t n, float* q_tile) {
  for (int64_t r = 0; r < n; ++r)
    load_row(p.q.data, p.q.dtype,
             s.batch * p.q.stride_b + (s.q_begin + i0 + r) * p.q.stride_l + h * p.q.stride_h, p.D,
             q_tile + r * p.D);
}

// Rows [j0, j0+nk) of an activation (k or v) for kv head hkv, transposed: out (dim x nk).
inline void load_transposed(const Activation& a, const SequenceSpan& s, int64_t hkv, int64_t j0,
                            int64_t nk, int64_t dim, float* row, float* out) {
  for (int64_t c = 0; c < nk; ++c) {
    load_row(a.data, a.dtype, s.batch * a.stride_b + (s.k_begin + j0 + c) * a.stride_l + hkv * a.stride_h,
             dim, row);
    for (int64_t d = 0; d < dim; ++d) out[d * nk + c] = row[d];
  }
}

// Same rows, row-major: out (nk x dim).
inline void load_rows(const Activation& a, const SequenceSpan& s, int64_t hkv, int64_t j0, int64_t nk,
                      int64_t dim, float* out) {
  for (int64_t c = 0; c < nk; ++c)
    load_row(a.data, a.dtype, s.batch * a.stride_b + (s.k_begin + j0 + c) * a.stride_l + hkv * a.stride_h,
             dim, out + c * dim);
}

// Dropout factors of row i (sequence-local) for keys [j0, j0 + nk): out[c] in {0, 1/(1-p)}.
inline void dropout_row(const AttentionParams& p, const SequenceSpan& s, int64_t h, int64_t i, int64_t j0,
                        int64_t nk, float* out) {
  for (int64_t c = 0; c < nk; ++c)
    out[c] = dropout_factor(p.dropout_seed, p.dropout_p, s.batch, h, s.q_begin + i, s.k_begin + j0 + c, p.H,
                            p.Lq, p.Lk);
}

inline float sink_logit(const AttentionParams& p, int64_t h) {
  return p.sinks ? p.sinks[h * p.sinks_stride] : kNegInf;
}

// max(a, b), NaN when either is NaN (std::max(a, NaN) is a): a NaN score must reach the
// row's running max, never be dropped by it.
inline float nan_max(float a, float b) { return a != a || b != b ? std::numeric_limits<float>::quiet_NaN() : std::max(a, b); }

// A row that saw no allowed key: m = -inf and l = 0. A NaN score leaves l NaN (e^NaN is
// NaN, whatever m is), so a row that saw one is NaN, never reported as empty.
inline bool row_is_empty(float m, float l) { return m == kNegInf && !std::isnan(l); }

// The end of a row's online softmax: from the running max m and sum l (over keys, m = -inf
// when none was allowed) and the head's sink logit, lse = log(Σ e^s + e^sink) and the factor
// that turns the running P·V sum into out. A row with no allowed key gives lse -inf and
// factor 0 (out 0), with or without a sink; a row whose l is NaN gives NaN for both.
struct RowResult {
  float lse, out_factor;
};
inline RowResult finish_row(float m, float l, float sink) {
  if (std::isnan(l)) return {l, l};
  if (m == kNegInf) return {kNegInf, 0.0f};
  if (sink == kNegInf) return {m + std::log(l), 1.0f / l};
  const float m_new = std::max(m, sink);
  const float total = l * std::exp(m - m_new) + std::exp(sink - m_new);
  return {m_new + std::log(total), std::exp(m - m_new) / total};
}

// Per-head statistics of one row, accumulated over its scores (any order of tiles, keys
// increasing within and across tiles): entropy = -Σ P (s - lse), the largest score and
// the first key that has it.
struct RowStats {
  float entropy = 0.0f, best = kNegInf, argmax = -1.0f;
  void add(float score, float lse, int64_t j) {
    if (score == kNegInf) return;
    const float logp = score - lse;
    entropy -= std::exp(logp) * logp;
    if (score > best) best = score, argmax = float(j);
  }
};

inline void store_row_stats(const AttentionParams& p, const SequenceSpan& s, int64_t h, int64_t i,
                            const RowStats& st, float lse) {
  float* dst = p.head_stats + s.batch * p.stats_stride_b + h * p.stats_stride_h + (s.q_begin + i) * p.stats_stride_i;
  const bool empty = lse == kNegInf;
  dst[0] = empty ? 0.0f : st.entropy;
  dst[p.stats_stride_k] = empty ? 0.0f : std::exp(st.best - lse);
  dst[2 * p.stats_stride_k] = empty ? -1.0f : st.argmax;
}

inline float* lse_ptr(const AttentionParams& p, const SequenceSpan& s, int64_t h, int64_t i) {
  return p.lse + s.batch * p.lse_stride_b + h * p.lse_stride_h + (s.q_begin + i) * p.lse_stride_i;
}

}  // namespace multihead::detail
