// The portable forward (plain C++, the scalar twin of flash_forward_simd.cpp).
// Tiled with an online softmax (FlashAttention-2 order): for each
// (sequence, query head, block of query rows) and each key tile of its range,
// S = scores, m/l running max and sum, acc += P·V; no Lq x Lk buffer.
#include <omp.h>

#include "kernels/cpu/score_modifiers.hpp"
#include "kernels/cpu/tile_ops.hpp"
#include "kernels/kernels.hpp"

namespace multihead::detail {

namespace {

struct ForwardScratch {
  float* q_tile;  // tile_q x D
  float* k_t;     // D x tile_k   (Kᵀ)
  float* v_tile;  // tile_k x Dv
  float* S;       // tile_q x tile_k
  float* acc;     // tile_q x Dv
  float* m;       // tile_q   running max
  float* l;       // tile_q   running sum of exp(s - m)
  float* row;     // max(D, Dv, tile_k): conversion buffer, dropout factors, a tile's P·V row
};

ForwardScratch carve(const AttentionParams& p, float* base) {
  ForwardScratch s;
  s.q_tile = base;
  s.k_t = s.q_tile + p.tile_q * p.D;
  s.v_tile = s.k_t + p.D * p.tile_k;
  s.S = s.v_tile + p.tile_k * p.Dv;
  s.acc = s.S + p.tile_q * p.tile_k;
  s.m = s.acc + p.tile_q * p.Dv;
  s.l = s.m + p.tile_q;
  s.row = s.l + p.tile_q;
  return s;
}

// Keys [j_begin, j_end) of span s (a sequence, or its extra_span) for query rows
// [i0, i0 + n) of head h, tile by tile, into the running m, l and acc of w:
//   m' = max(m, max_j s);  l = l·e^(m - m') + Σ e^(s - m');  acc = acc·e^(m - m') + P·V
void keys_online_softmax(const AttentionParams& p, const SequenceSpan& s, int64_t h, int64_t i0, int64_t n,
                         int64_t j_begin, int64_t j_end, const ForwardScratch& w) {
  const int64_t hkv = h / p.group;
  for (int64_t j0 = j_begin; j0 < j_end; j0 += p.tile_k) {
    const int64_t nk = std::min(p.tile_k, j_end - j0);
    load_transposed(p.k, s, hkv, j0, nk, p.D, w.row, w.k_t);
    load_rows(p.v, s, hkv, j0, nk, p.Dv, w.v_tile);
    score_tile(p, s, h, i0, n, j0, nk, w.q_tile, w.k_t, w.S, nullptr);
    for (int64_t r = 0; r < n; ++r) {
      float* srow = w.S + r * nk;
      float tile_max = kNegInf;  // NaN when a score is (then so are m, l and acc)
      for (int64_t c = 0; c < nk; ++c) tile_max = nan_max(tile_max, srow[c]);
      if (tile_max == kNegInf) continue;  // nothing allowed in this tile for this row
      // m' = max(m, max_j s);  l = l·e^(m - m') + Σ e^(s - m');  acc = acc·e^(m - m') + P·V
      const float m_new = nan_max(w.m[r], tile_max);
      const float correction = std::exp(w.m[r] - m_new);  // 0 when m was -inf
      float sum = 0.0f;
      for (int64_t c = 0; c < nk; ++c) {
        srow[c] = std::exp(srow[c] - m_new);
        sum += srow[c];
      }
      w.l[r] = w.l[r] * correction + sum;
      w.m[r] = m_new;
      // Dropout acts on P·V only: l (and so lse) keeps every weight.
      if (p.dropout_p > 0.0f) {
        dropout_row(p, s, h, i0 + r, j0, nk, w.row);
        for (int64_t c = 0; c < nk; ++c) srow[c] *= w.row[c];
      }
      // tile = Σ_c P[r, c] · V[c, :] on its own, then acc = acc·correction + tile (blocked
      // sums, as the SIMD kernel: a long key axis is not one running sum)
      float* tile = w.row;  // free again after the dropout factors
      std::fill_n(tile, p.Dv, 0.0f);
      for (int64_t c = 0; c < nk; ++c) {
        const float pc = srow[c];
        if (pc == 0.0f) continue;
        const float* vrow = w.v_tile + c * p.Dv;
        for (int64_t d = 0; d < p.Dv; ++d) tile[d] += pc * vrow[d];
      }
      float* acc = w.acc + r * p.Dv;
      for (int64_t d = 0; d < p.Dv; ++d) acc[d] = acc[d] * correction + tile[d];
    }
  }
}

void forward_item(const AttentionParams& p, const WorkItem& item, const ForwardScratch& w) {
  const SequenceSpan& s = p.seqs[item.seq];
  const int64_t h = item.head;
  const int64_t i0 = item.begin, n = item.end - item.begin;
  load_q_tile(p, s, h, i0, n, w.q_tile);
  std::fill_n(w.m, n, kNegInf);
  std::fill_n(w.l, n, 0.0f);
  std::fill_n(w.acc, n * p.Dv, 0.0f);

  // The input keys of the rows' range, then the extra keys (extra_span: every row sees
  // them, softcap only) through the same online softmax:
  //   m, l, acc over j in [key_range) ∪ [k_extra_begin, k_extra_begin + k_extra)
  keys_online_softmax(p, s, h, i0, n, key_range(p, s, i0).lo, key_range(p, s, i0 + n - 1).hi, w);
  if (s.k_extra > 0) keys_online_softmax(p, extra_span(s), h, i0, n, 0, s.k_extra, w);

  const float sink = sink_logit(p, h);
  for (int64_t r = 0; r < n; ++r) {
    const int64_t i = i0 + r;
    float* acc = w.acc + r * p.Dv;
    const RowResult result = finish_row(w.m[r], w.l[r], sink);
    if (row_is_empty(w.m[r], w.l[r])) std::fill_n(acc, p.Dv, 0.0f);  // never 0 · inf
    store_row(p.out.data, p.out.dtype,
              s.batch * p.out.stride_b + (s.q_begin + i) * p.out.stride_l + h * p.out.stride_h, p.Dv, acc,
              result.out_factor);
    if (p.lse) *lse_ptr(p, s, h, i) = result.lse;
  }
}

// probs[i, j] = exp(s_ij - lse_i) over every key column (0 outside the allowed set),
// recomputed from the final lse so it cannot change the output bits. Columns
// [0, k_extra_begin) are the input keys (0 past k_len), the rest the extra keys, scored on
// extra_span: probs[i, k_extra_begin + c] = exp(s_ic - lse_i) for every row.
void probs_item(const AttentionParams& p, const WorkItem& item, const ForwardScratch& w) {
  const SequenceSpan& s = p.seqs[item.seq];
  const int64_t h = item.head, hkv = h / p.group;
  const int64_t i0 = item.begin, n = item.end - item.begin;
  load_q_tile(p, s, h, i0, n, w.q_tile);
  // Columns [col0 + j0, col0 + j_end) of span span (keys past its k_len read nothing).
  const auto columns = [&](const SequenceSpan& span, int64_t col0, int64_t j_end) {
    for (int64_t j0 = 0; j0 < j_end; j0 += p.tile_k) {
      const int64_t nk = std::min(p.tile_k, j_end - j0);
      const int64_t nk_valid = std::clamp<int64_t>(span.k_len - j0, 0, nk);
      if (nk_valid > 0) {
        load_transposed(p.k, span, hkv, j0, nk_valid, p.D, w.row, w.k_t);
        score_tile(p, span, h, i0, n, j0, nk_valid, w.q_tile, w.k_t, w.S, nullptr);
      }
      for (int64_t r = 0; r < n; ++r) {
        const int64_t i = i0 + r;
        const float lse = *lse_ptr(p, s, h, i);
        float* dst = p.probs + s.batch * p.probs_stride_b + h * p.probs_stride_h + i * p.probs_stride_i;
        for (int64_t c = 0; c < nk; ++c) {
          const float sc = c < nk_valid ? w.S[r * nk_valid + c] : kNegInf;
          dst[(col0 + j0 + c) * p.probs_stride_j] = (sc == kNegInf || lse == kNegInf) ? 0.0f : std::exp(sc - lse);
        }
      }
    }
  };
  columns(s, 0, s.k_extra_begin);
  if (s.k_extra > 0) columns(extra_span(s), s.k_extra_begin, s.k_extra);
}

// Per-head statistics of each row from exp(s - lse) over its key range, recomputed like
// the probabilities.
void stats_item(const AttentionParams& p, const WorkItem& item, const ForwardScratch& w) {
  const SequenceSpan& s = p.seqs[item.seq];
  const int64_t h = item.head, hkv = h / p.group;
  const int64_t i0 = item.begin, n = item.end - item.begin;
  RowStats stats[kTileQ];  // n <= tile_q = kTileQ
  load_q_tile(p, s, h, i0, n, w.q_tile);
  const int64_t j_begin = key_range(p, s, i0).lo, j_end = key_range(p, s, i0 + n - 1).hi;
  for (int64_t j0 = j_begin; j0 < j_end; j0 += p.tile_k) {
    const int64_t nk = std::min(p.tile_k, j_end - j0);
    load_transposed(p.k, s, hkv, j0, nk, p.D, w.row, w.k_t);
    score_tile(p, s, h, i0, n, j0, nk, w.q_tile, w.k_t, w.S, nullptr);
    for (int64_t r = 0; r < n; ++r) {
      const float lse = *lse_ptr(p, s, h, i0 + r);
      for (int64_t c = 0; c < nk; ++c) stats[r].add(w.S[r * nk + c], lse, j0 + c);
    }
  }
  // The extra keys after the input keys (RowStats wants keys in order): key j of the
  // sequence is k_extra_begin + c.
  const SequenceSpan es = extra_span(s);
  for (int64_t j0 = 0; j0 < s.k_extra; j0 += p.tile_k) {
    const int64_t nk = std::min(p.tile_k, s.k_extra - j0);
    load_transposed(p.k, es, hkv, j0, nk, p.D, w.row, w.k_t);
    score_tile(p, es, h, i0, n, j0, nk, w.q_tile, w.k_t, w.S, nullptr);
    for (int64_t r = 0; r < n; ++r) {
      const float lse = *lse_ptr(p, s, h, i0 + r);
      for (int64_t c = 0; c < nk; ++c) stats[r].add(w.S[r * nk + c], lse, s.k_extra_begin + j0 + c);
    }
  }
  for (int64_t r = 0; r < n; ++r) store_row_stats(p, s, h, i0 + r, stats[r], *lse_ptr(p, s, h, i0 + r));
}

}  // namespace

int64_t forward_portable_scratch_floats(const AttentionParams& p) {
  return p.tile_q * p.D + p.D * p.tile_k + p.tile_k * p.Dv + p.tile_q * p.tile_k + p.tile_q * p.Dv +
         2 * p.tile_q + std::max({p.D, p.Dv, p.tile_k}) + 16;
}

void flash_forward_portable(const AttentionParams& p, float* scratch, int64_t scratch_per_thread) {
  const int64_t count = int64_t(p.q_items.size());
#pragma omp parallel num_threads(p.num_threads)
  {
    const ForwardScratch w = carve(p, scratch + omp_get_thread_num() * scratch_per_thread);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < count; ++t) {
      forward_item(p, p.q_items[t], w);
      if (p.probs) probs_item(p, p.q_items[t], w);
      if (p.head_stats) stats_item(p, p.q_items[t], w);
    }
  }
}

}  // namespace multihead::detail
