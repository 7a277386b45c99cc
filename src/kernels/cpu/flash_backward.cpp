// The portable backward (plain C++; the SIMD one is flash_backward_simd.cpp).
// Tiled (FlashAttention-2 recompute, no Lq x Lk buffer), in passes that
// each own their outputs, so no atomics and the same bits for any thread count:
//   1. D_i = rowsum(dO ∘ O)                       per (sequence, query head, rows)
//   2. dK, dV                                     per (sequence, kv head, key rows),
//                                                 looping over the group's query heads
//   3. dQ                                         per (sequence, query head, rows)
//   4. dbias (when asked)                         per block of the dbias tensor
//   5. dsinks (when asked)                        serial, tiny
// Every pass recomputes P = exp(S - lse) with the forward's own score_tile.
#include <omp.h>

#include "kernels/cpu/score_modifiers.hpp"
#include "kernels/cpu/tile_ops.hpp"
#include "kernels/kernels.hpp"

namespace multihead::detail {

namespace {

struct BackwardScratch {
  float* q_tile;   // tile_q x D
  float* do_tile;  // tile_q x Dv
  float* k_t;      // D x tile_k   (Kᵀ)
  float* k_rows;   // tile_k x D
  float* v_t;      // Dv x tile_k  (Vᵀ)
  float* S;        // tile_q x tile_k: scores, then P
  float* raw;      // tile_q x tile_k: scale·QKᵀ before softcap
  float* dS;       // tile_q x tile_k: dP, then dS, then dS'
  float* acc_a;    // max(tile_q, tile_k) x max(D, Dv): dQ or dK
  float* acc_b;    // tile_k x Dv: dV
  float* dk_block; // tile_k x D: one query block's share of dK (blocked sums)
  float* dv_block; // tile_k x Dv: one query block's share of dV
  float* dropout;  // tile_q x tile_k: dropout factors Z
  float* row_stat; // tile_q x 2: lse_i, D_i
  float* row;      // max(D, Dv)
};

int64_t max_dim(const AttentionParams& p) { return std::max(p.D, p.Dv); }

BackwardScratch carve(const AttentionParams& p, float* base) {
  const int64_t tq = p.tile_q, tk = p.tile_k, tmax = std::max(tq, tk);
  BackwardScratch s;
  s.q_tile = base;
  s.do_tile = s.q_tile + tq * p.D;
  s.k_t = s.do_tile + tq * p.Dv;
  s.k_rows = s.k_t + p.D * tk;
  s.v_t = s.k_rows + tk * p.D;
  s.S = s.v_t + p.Dv * tk;
  s.raw = s.S + tq * tk;
  s.dS = s.raw + tq * tk;
  s.acc_a = s.dS + tq * tk;
  s.acc_b = s.acc_a + tmax * max_dim(p);
  s.dk_block = s.acc_b + tk * p.Dv;
  s.dv_block = s.dk_block + tk * p.D;
  s.dropout = s.dv_block + tk * p.Dv;
  s.row_stat = s.dropout + tq * tk;
  s.row = s.row_stat + 2 * tq;
  return s;
}

float* dsum_ptr(const AttentionParams& p, float* dsum, const SequenceSpan& s, int64_t h, int64_t i) {
  // D_i is laid out like a contiguous (B, H, Lq) lse.
  return dsum + (s.batch * p.H + h) * p.Lq + s.q_begin + i;
}

// Loads Q, dO rows [i0, i0+n) of head h and their lse and D.
void load_query_side(const AttentionParams& p, const BackwardParams& g, const float* dsum,
                     const SequenceSpan& s, int64_t h, int64_t i0, int64_t n, const BackwardScratch& w) {
  load_q_tile(p, s, h, i0, n, w.q_tile);
  for (int64_t r = 0; r < n; ++r) {
    const int64_t i = i0 + r;
    load_row(g.dout.data, g.dout.dtype,
             s.batch * g.dout.stride_b + (s.q_begin + i) * g.dout.stride_l + h * g.dout.stride_h, p.Dv,
             w.do_tile + r * p.Dv);
    w.row_stat[2 * r] = *lse_ptr(p, s, h, i);
    w.row_stat[2 * r + 1] = dsum_ptr(p, const_cast<float*>(dsum), s, h, i)[0];
  }
}

// With k_t and v_t loaded for keys [j0, j0+nk): S <- P ∘ Z = exp(S - lse) ∘ dropout and
// dS <- dS' (the gradient w.r.t. scale·QKᵀ, through the softcap when set), and
// bias_grad (when non-null) <- dS before the softcap's chain rule, i.e. d(bias).
void probs_and_dscores(const AttentionParams& p, const SequenceSpan& s, int64_t h, int64_t i0, int64_t n,
                       int64_t j0, int64_t nk, const BackwardScratch& w, float* bias_grad) {
  const bool softcap = p.softcap > 0.0f;
  score_tile(p, s, h, i0, n, j0, nk, w.q_tile, w.k_t, w.S, softcap ? w.raw : nullptr);
  for (int64_t r = 0; r < n; ++r) {
    const float lse = w.row_stat[2 * r], dsum = w.row_stat[2 * r + 1];
    float* prow = w.S + r * nk;
    float* dsrow = w.dS + r * nk;
    // forward: P = exp(S - lse)
    for (int64_t c = 0; c < nk; ++c)
      prow[c] = (prow[c] == kNegInf || lse == kNegInf) ? 0.0f : std::exp(prow[c] - lse);
    // forward: O = P V, so dP = dO Vᵀ:  dP[r, :] += dO[r, d] · Vᵀ[d, :]
    std::fill_n(dsrow, nk, 0.0f);
    const float* dorow = w.do_tile + r * p.Dv;
    for (int64_t d = 0; d < p.Dv; ++d) {
      const float g = dorow[d];
      const float* vd = w.v_t + d * nk;
      for (int64_t c = 0; c < nk; ++c) dsrow[c] += g * vd[c];
    }
    // dropout: O = (P ∘ Z) V, so dP = Z ∘ (dO Vᵀ), and dV below uses P ∘ Z
    float* zrow = w.dropout + r * nk;
    if (p.dropout_p > 0.0f) {
      dropout_row(p, s, h, i0 + r, j0, nk, zrow);
      for (int64_t c = 0; c < nk; ++c) dsrow[c] *= zrow[c];
    }
    // softmax: dS = P ∘ (dP - D); exactly 0 where P is, so garbage in masked V cannot leak
    for (int64_t c = 0; c < nk; ++c) dsrow[c] = prow[c] == 0.0f ? 0.0f : prow[c] * (dsrow[c] - dsum);
    if (p.dropout_p > 0.0f)
      for (int64_t c = 0; c < nk; ++c) prow[c] *= zrow[c];  // S now holds P ∘ Z, for dV
    if (bias_grad) std::copy_n(dsrow, nk, bias_grad + r * nk);
    // forward: s = c·tanh(raw / c), so d raw = ds · (1 - tanh²(raw / c))
    if (softcap) softcap_backward(p.softcap, w.raw + r * nk, dsrow, nk);
  }
}

void row_dot_do_o(const AttentionParams& p, const BackwardParams& g, float* dsum, const WorkItem& item,
                  const BackwardScratch& w) {
  const SequenceSpan& s = p.seqs[item.seq];
  for (int64_t i = item.begin; i < item.end; ++i) {
    const int64_t row = s.batch * g.dout.stride_b + (s.q_begin + i) * g.dout.stride_l + item.head * g.dout.stride_h;
    const int64_t orow = s.batch * p.out.stride_b + (s.q_begin + i) * p.out.stride_l + item.head * p.out.stride_h;
    load_row(g.dout.data, g.dout.dtype, row, p.Dv, w.row);
    load_row(p.out.data, p.out.dtype, orow, p.Dv, w.do_tile);
    // Summed in the same order as dP = dO·v, so dP - D cancels exactly where P is one-hot.
    float sum = 0.0f;
    for (int64_t d = 0; d < p.Dv; ++d) sum += w.row[d] * w.do_tile[d];
    *dsum_ptr(p, dsum, s, item.head, i) = sum;
  }
}

void dk_dv_item(const AttentionParams& p, const BackwardParams& g, const float* dsum, const WorkItem& item,
                const BackwardScratch& w) {
  // Items of extra keys (plan_backward: never straddling k_extra_begin) run on the
  // sequence's extra_span, where every query sees every key:
  //   dv_j = Σ_i P_ij Z_ij dout_i,  dk_j = scale Σ_i dS'_ij q_i   over all rows i
  const SequenceSpan& seq = p.seqs[item.seq];
  const bool extra = seq.k_extra > 0 && item.begin >= seq.k_extra_begin;
  const SequenceSpan s = extra ? extra_span(seq) : seq;
  const int64_t hkv = item.head, j0 = item.begin - (extra ? seq.k_extra_begin : 0), n_out = item.end - item.begin;
  // Keys past k_len (key padding) are never attended: their gradients are zero.
  const int64_t nk = std::clamp<int64_t>(s.k_len - j0, 0, n_out);
  float* dk = w.acc_a;  // n_out x D
  float* dv = w.acc_b;  // n_out x Dv
  std::fill_n(dk, n_out * p.D, 0.0f);
  std::fill_n(dv, n_out * p.Dv, 0.0f);
  load_transposed(p.k, s, hkv, j0, nk, p.D, w.row, w.k_t);
  load_transposed(p.v, s, hkv, j0, nk, p.Dv, w.row, w.v_t);
  const IndexRange rows = nk > 0 ? query_range(p, s, j0, j0 + nk) : IndexRange{0, 0};
  for (int64_t h = hkv * p.group; h < (hkv + 1) * p.group; ++h) {
    for (int64_t i0 = rows.lo; i0 < rows.hi; i0 += p.tile_q) {
      const int64_t n = std::min(p.tile_q, rows.hi - i0);
      load_query_side(p, g, dsum, s, h, i0, n, w);
      probs_and_dscores(p, s, h, i0, n, j0, nk, w, nullptr);
      // Blocked sums (as the SIMD kernel): this block's share apart, then added, so a long
      // query axis is (rows per block + blocks) roundings deep, not Lq.
      std::fill_n(w.dk_block, nk * p.D, 0.0f);
      std::fill_n(w.dv_block, nk * p.Dv, 0.0f);
      for (int64_t r = 0; r < n; ++r) {
        const float* prow = w.S + r * nk;
        const float* dsrow = w.dS + r * nk;
        const float* dorow = w.do_tile + r * p.Dv;
        const float* qrow = w.q_tile + r * p.D;
        for (int64_t c = 0; c < nk; ++c) {
          // dV[c, :] += P[r, c] · dO[r, :]
          if (prow[c] != 0.0f) {
            float* dvrow = w.dv_block + c * p.Dv;
            for (int64_t d = 0; d < p.Dv; ++d) dvrow[d] += prow[c] * dorow[d];
          }
          // dK[c, :] += dS'[r, c] · Q[r, :]   (scale applied once at the end)
          if (dsrow[c] != 0.0f) {
            float* dkrow = w.dk_block + c * p.D;
            for (int64_t d = 0; d < p.D; ++d) dkrow[d] += dsrow[c] * qrow[d];
          }
        }
      }
      for (int64_t e = 0; e < nk * p.D; ++e) dk[e] += w.dk_block[e];
      for (int64_t e = 0; e < nk * p.Dv; ++e) dv[e] += w.dv_block[e];
    }
  }
  for (int64_t c = 0; c < n_out; ++c) {
    const int64_t j = s.k_begin + j0 + c;
    store_row(g.dk.data, g.dk.dtype, s.batch * g.dk.stride_b + j * g.dk.stride_l + hkv * g.dk.stride_h, p.D,
              dk + c * p.D, p.scale);
    store_row(g.dv.data, g.dv.dtype, s.batch * g.dv.stride_b + j * g.dv.stride_l + hkv * g.dv.stride_h, p.Dv,
              dv + c * p.Dv, 1.0f);
  }
}

void dq_item(const AttentionParams& p, const BackwardParams& g, const float* dsum, const WorkItem& item,
             const BackwardScratch& w) {
  const SequenceSpan& s = p.seqs[item.seq];
  const int64_t h = item.head, hkv = h / p.group, i0 = item.begin, n = item.end - item.begin;
  float* dq = w.acc_a;  // n x D
  std::fill_n(dq, n * p.D, 0.0f);
  load_query_side(p, g, dsum, s, h, i0, n, w);
  // Keys [j_begin, j_end) of span span: the input keys, then the extra keys on extra_span
  // (dq_i = scale Σ_j dS'_ij k_j over both).
  const auto keys = [&](const SequenceSpan& span, int64_t j_begin, int64_t j_end) {
    for (int64_t j0 = j_begin; j0 < j_end; j0 += p.tile_k) {
      const int64_t nk = std::min(p.tile_k, j_end - j0);
      load_transposed(p.k, span, hkv, j0, nk, p.D, w.row, w.k_t);
      load_rows(p.k, span, hkv, j0, nk, p.D, w.k_rows);
      load_transposed(p.v, span, hkv, j0, nk, p.Dv, w.row, w.v_t);
      probs_and_dscores(p, span, h, i0, n, j0, nk, w, nullptr);
      // dQ[r, :] += Σ_c dS'[r, c] · K[c, :]   (scale applied once at the end), the key
      // tile's share summed apart first (blocked sums, as the SIMD kernel)
      for (int64_t r = 0; r < n; ++r) {
        float* tile = w.row;  // free again after the loads above
        std::fill_n(tile, p.D, 0.0f);
        const float* dsrow = w.dS + r * nk;
        for (int64_t c = 0; c < nk; ++c) {
          if (dsrow[c] == 0.0f) continue;
          const float* krow = w.k_rows + c * p.D;
          for (int64_t d = 0; d < p.D; ++d) tile[d] += dsrow[c] * krow[d];
        }
        float* dqrow = dq + r * p.D;
        for (int64_t d = 0; d < p.D; ++d) dqrow[d] += tile[d];
      }
    }
  };
  keys(s, key_range(p, s, i0).lo, key_range(p, s, i0 + n - 1).hi);
  if (s.k_extra > 0) keys(extra_span(s), 0, s.k_extra);
  for (int64_t r = 0; r < n; ++r)
    store_row(g.dq.data, g.dq.dtype, s.batch * g.dq.stride_b + (s.q_begin + i0 + r) * g.dq.stride_l + h * g.dq.stride_h,
              p.D, dq + r * p.D, p.scale);
}

// One block of dbias: target (b_t, h_t, rows [i_begin, i_end)) of the dbias tensor, with
// every reduced dim summed in the fixed order b, h, i, j. Not combined with varlen, so
// sequence b is batch b.
void dbias_item(const AttentionParams& p, const BackwardParams& g, const float* dsum, const WorkItem& item,
                const BackwardScratch& w) {
  const int64_t b_lo = g.dbias_reduce_b ? 0 : item.seq, b_hi = g.dbias_reduce_b ? p.B : item.seq + 1;
  const int64_t h_lo = g.dbias_reduce_h ? 0 : item.head, h_hi = g.dbias_reduce_h ? p.H : item.head + 1;
  const int64_t rows_out = g.dbias_reduce_i ? 1 : item.end - item.begin;
  const int64_t cols_out = g.dbias_reduce_j ? 1 : p.Lk - p.extra_keys;  // dbias has no extra columns
  // This item owns its target block exclusively: zero it, then accumulate in place.
  for (int64_t r = 0; r < rows_out; ++r)
    for (int64_t c = 0; c < cols_out; ++c)
      g.dbias[item.seq * g.dbias_stride_b + item.head * g.dbias_stride_h + (item.begin + r) * g.dbias_stride_i +
              c * g.dbias_stride_j] = 0.0f;
  for (int64_t b = b_lo; b < b_hi; ++b) {
    const SequenceSpan& s = p.seqs[b];
    for (int64_t h = h_lo; h < h_hi; ++h) {
      const int64_t hkv = h / p.group;
      for (int64_t i0 = item.begin; i0 < item.end; i0 += p.tile_q) {
        const int64_t n = std::min(p.tile_q, item.end - i0);
        load_query_side(p, g, dsum, s, h, i0, n, w);
        const int64_t j_begin = key_range(p, s, i0).lo, j_end = key_range(p, s, i0 + n - 1).hi;
        for (int64_t j0 = j_begin; j0 < j_end; j0 += p.tile_k) {
          const int64_t nk = std::min(p.tile_k, j_end - j0);
          load_transposed(p.k, s, hkv, j0, nk, p.D, w.row, w.k_t);
          load_transposed(p.v, s, hkv, j0, nk, p.Dv, w.row, w.v_t);
          probs_and_dscores(p, s, h, i0, n, j0, nk, w, w.raw);  // raw <- d(bias) tile
          for (int64_t r = 0; r < n; ++r) {
            const int64_t ri = g.dbias_reduce_i ? 0 : i0 + r;
            for (int64_t c = 0; c < nk; ++c) {
              const int64_t cj = g.dbias_reduce_j ? 0 : j0 + c;
              g.dbias[item.seq * g.dbias_stride_b + item.head * g.dbias_stride_h + ri * g.dbias_stride_i +
                      cj * g.dbias_stride_j] += w.raw[r * nk + c];
            }
          }
        }
      }
    }
  }
}

}  // namespace

int64_t backward_portable_scratch_floats(const AttentionParams& p) {
  const int64_t tq = p.tile_q, tk = p.tile_k, tmax = std::max(tq, tk);
  return tq * p.D + tq * p.Dv + p.D * tk + tk * p.D + p.Dv * tk + 4 * tq * tk + tmax * max_dim(p) +
         tk * p.Dv + tk * (p.D + p.Dv) + 2 * tq + max_dim(p) + 16;
}

void flash_backward_portable(const AttentionParams& p, const BackwardParams& g, float* scratch,
                             int64_t scratch_per_thread) {
  // Pass 1 needs a (B, H, Lq) buffer for D; it sits after the per-thread scratch.
  float* dsum = scratch + int64_t(p.num_threads) * scratch_per_thread;
  const int64_t nq = int64_t(p.q_items.size()), nkv = int64_t(g.kv_items.size());
  const int64_t nbias = int64_t(g.bias_items.size());
#pragma omp parallel num_threads(p.num_threads)
  {
    const BackwardScratch w = carve(p, scratch + omp_get_thread_num() * scratch_per_thread);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < nq; ++t) row_dot_do_o(p, g, dsum, p.q_items[t], w);
    // (implicit barrier: every D_i is ready)
#pragma omp for schedule(dynamic, 1) nowait
    for (int64_t t = 0; t < nkv; ++t) dk_dv_item(p, g, dsum, g.kv_items[t], w);
#pragma omp for schedule(dynamic, 1) nowait
    for (int64_t t = 0; t < nq; ++t) dq_item(p, g, dsum, p.q_items[t], w);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < nbias; ++t) dbias_item(p, g, dsum, g.bias_items[t], w);
  }
  // dsink_h = -Σ_{b,i} exp(sink_h - lse_i) · D_i, in a fixed order.
  if (g.dsinks) {
    for (int64_t h = 0; h < p.H; ++h) {
      const float sink = sink_logit(p, h);
      double sum = 0.0;  // a reduction over B·Lq rows: double keeps it exact to fp32
      for (const SequenceSpan& s : p.seqs)
        for (int64_t i = 0; i < s.q_len; ++i) {
          const float lse = *lse_ptr(p, s, h, i);
          if (lse != kNegInf) sum += double(std::exp(sink - lse)) * double(*dsum_ptr(p, dsum, s, h, i));
        }
      g.dsinks[h * g.dsinks_stride] = float(-sum);
    }
  }
}

}  // namespace multihead::detail
