// SIMD backward (Highway). The portable backward's passes (flash_backward.cpp), on the
// transposed tiles of the SIMD forward, each pass owning its outputs (no atomics; the
// same bits for any thread count):
//   0. per group item: pack Qᵀ, Q, dOᵀ, dO, lse and D = rowsum(dO ∘ O) once
//   1. per (sequence, kv head, key block): dK, dV over the query blocks that see the keys
//   2. per group item: dQ over its key range
//   3. per block of the dbias tensor (when asked): d(bias), summed in a fixed order
// With enough (sequence, kv head) pairs to share out (fuse_dq), passes 1 and 2 run as one:
// per pair, key block by key block, each query block's dQ accumulating in its query side.
// That computes S, P, dP and dS once per tile pair instead of twice (5 products, not 7),
// with the same bits: dQ sums the same dS and K rows in the same key order.
// Every pass scores with the forward's code (scores_t or decode_scores, then the modifier
// unit of score_modifiers_simd-inl.hpp), so P = exp(S - lse) matches the forward's lse bit
// for bit. (One exception remains: bf16 tiles on vdpbf16ps, bf16_dot, are scored by the
// forward in pairs and by the backward as f32 products.)
// All five products use the one outer-product micro-kernel of outer_product-inl.hpp:
//   Sᵀ = K Qᵀ,  dPᵀ = V dOᵀ,  dV += Pᵀ dO,  dK += dSᵀ Q,  dQ += dS K.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/flash_backward_simd.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include <omp.h>

#include "kernels/cpu/bf16_dot.hpp"
#include "kernels/cpu/simd_tiles-inl.hpp"
#include "kernels/kernels.hpp"

HWY_BEFORE_NAMESPACE();
namespace multihead {
namespace detail {
namespace HWY_NAMESPACE {

namespace {

// (sequence, kv head) pairs per thread from which passes 1 and 2 are fused.
inline constexpr int64_t kFuseUnitsPerThread = 4;

// Fused units are whole (sequence, kv head) pairs: fuse when there are enough of them to
// keep every thread busy. Both ways give the same bits, so this may follow the threads.
int64_t kv_pairs(const AttentionParams& p) { return int64_t(p.seqs.size()) * p.Hkv; }
bool fuse_dq(const AttentionParams& p) { return kv_pairs(p) >= kFuseUnitsPerThread * p.num_threads; }

// A group item's packed query side (pass 0), in the shared scratch.
struct QuerySide {
  float* q_t;      // D x rows_pad       Qᵀ · scale (decode calls: pack_decode_queries)
  uint32_t* q_pairs;  // D/2 x rows_pad  Qᵀ unscaled as bf16 pairs (vdpbf16ps tiles: the forward's scores)
  float* q;        // rows_pad x d_vec   Q
  float* do_t;     // Dv x rows_pad      dOᵀ
  float* dout;     // rows_pad x dv_vec  dO
  float* lse;      // rows_pad           -inf on padded rows
  float* dsum;     // rows_pad           D = rowsum(dO ∘ O)
  float* dq;       // rows_pad x d_vec   dQ / scale, accumulated when fuse_dq (else empty)
};

QuerySide carve_query_side(const AttentionParams& p, const TileShape& t, ScratchCarver& take) {
  QuerySide q;
  q.q_t = take(std::max(p.D, t.d_vec) * t.rows_pad);
  q.q_pairs = reinterpret_cast<uint32_t*>(take(use_bf16_dot(p) && !p.decode ? (p.D + 1) / 2 * t.rows_pad : 0));
  q.q = take(t.rows_pad * t.d_vec);
  q.do_t = take(p.Dv * t.rows_pad);
  q.dout = take(t.rows_pad * t.dv_vec);
  q.lse = take(t.rows_pad);
  q.dsum = take(t.rows_pad);
  q.dq = take(fuse_dq(p) ? t.rows_pad * t.d_vec : 0);
  return q;
}

int64_t query_side_floats(const AttentionParams& p, const TileShape& t) {
  ScratchCarver sizing;
  carve_query_side(p, t, sizing);
  return sizing.used;
}

QuerySide query_side(const AttentionParams& p, const TileShape& t, float* shared, int64_t item) {
  ScratchCarver blocks{shared + item * query_side_floats(p, t)};
  return carve_query_side(p, t, blocks);
}

// One thread's tiles.
struct BackwardTiles {
  float* k;      // kTileK x d_vec      K rows
  float* k_dq;   // kTileK x d_vec      K rows for dQ, those no row attends zeroed (fuse_dq, masks)
  float* v;      // kTileK x Dv         V rows
  float* s_t;    // kTileK x rows_pad   Sᵀ, then Pᵀ (∘ Z with dropout)
  float* raw_t;  // kTileK x rows_pad   Sᵀ before the softcap
  float* dp_t;   // kTileK x rows_pad   dPᵀ, then dSᵀ
  float* dk;     // kTileK x d_vec
  float* dv;     // kTileK x dv_vec
  float* dk_block;  // kTileK x d_vec   one query block's share of dK (blocked sums)
  float* dv_block;  // kTileK x dv_vec  one query block's share of dV
  float* dq;     // rows_pad x d_vec
  float* dq_tile;  // rows_pad x d_vec  one key tile's share of dQ (blocked sums)
  float* row;    // max(D, Dv, kTileK)
  uint32_t* k_pairs;  // kTileK x D/2  K rows as bf16 pairs (vdpbf16ps tiles)
};

BackwardTiles carve(const AttentionParams& p, const TileShape& t, ScratchCarver& take) {
  BackwardTiles w;
  w.k = take(kTileK * t.d_vec);
  w.k_dq = take(fuse_dq(p) ? kTileK * t.d_vec : 0);
  w.v = take(kTileK * p.Dv);
  w.s_t = take(kTileK * t.rows_pad);
  w.raw_t = take(kTileK * t.rows_pad);
  w.dp_t = take(kTileK * t.rows_pad);
  w.dk = take(kTileK * t.d_vec);
  w.dv = take(kTileK * t.dv_vec);
  w.dk_block = take(kTileK * t.d_vec);
  w.dv_block = take(kTileK * t.dv_vec);
  w.dq = take(t.rows_pad * t.d_vec);
  w.dq_tile = take(t.rows_pad * t.d_vec);
  w.row = take(std::max({p.D, p.Dv, kTileK}));
  w.k_pairs = reinterpret_cast<uint32_t*>(take(use_bf16_dot(p) && !p.decode ? kTileK * ((p.D + 1) / 2) : 0));
  return w;
}

void pack_query_side(const AttentionParams& p, const BackwardParams& g, const TileShape& t, const WorkItem& item,
                     const QuerySide& qs, float* row) {
  const SequenceSpan& s = p.seqs[size_t(item.seq)];
  const int64_t hkv = item.head, i0 = item.begin, n = item.end - item.begin;
  if (p.decode) {  // the forward's decode scoring
    pack_decode_queries(p, t, s, hkv, i0, n, t.rows_pad, qs.q_t);
  } else if (use_bf16_dot(p)) {  // the forward's vdpbf16ps scoring: Qᵀ unscaled, paired
    const int64_t d2 = (p.D + 1) / 2;
    pack_item_rows_t(p.q, p.D, 1.0f, p, s, hkv, i0, n, t, row, qs.q_t);
    std::fill(qs.q_t + p.D * t.rows_pad, qs.q_t + 2 * d2 * t.rows_pad, 0.0f);
    bf16_pair_rows(qs.q_t, t.rows_pad, d2, t.rows_pad, qs.q_pairs, t.rows_pad);
  } else {
    pack_item_rows_t(p.q, p.D, p.scale, p, s, hkv, i0, n, t, row, qs.q_t);
  }
  pack_item_rows(p.q, p.D, t.d_vec, p, s, hkv, i0, n, t.rows_pad, qs.q);
  pack_item_rows_t(g.dout, p.Dv, 1.0f, p, s, hkv, i0, n, t, row, qs.do_t);
  pack_item_rows(g.dout, p.Dv, t.dv_vec, p, s, hkv, i0, n, t.rows_pad, qs.dout);
  std::fill_n(qs.lse, t.rows_pad, kNegInf);
  std::fill_n(qs.dsum, t.rows_pad, 0.0f);
  for (int64_t r = 0; r < p.group * n; ++r) {
    qs.lse[r] = *lse_ptr(p, s, hkv * p.group + r / n, i0 + r % n);
    // D = dO · O as fused multiply-adds in the order the micro-kernel sums dP = dO · v,
    // so dP - D cancels exactly where P is one-hot (O = v).
    load_row_simd(p.out.data, p.out.dtype, item_row_offset(p.out, p, s, hkv, i0, n, r), p.Dv, row);
    const float* dor = qs.dout + r * t.dv_vec;
    float sum = 0.0f;
    for (int64_t d = 0; d < p.Dv; ++d) sum = std::fma(row[d], dor[d], sum);
    qs.dsum[r] = sum;
  }
}

// P = exp(S - lse) into Sᵀ and, without dropout, dS = P ∘ (dP - D) into dPᵀ, for G row
// vectors from row r (G independent streams, as in the forward's softmax).
template <int G>
HWY_INLINE void probs_and_dscores_vectors(const AttentionParams& p, const TileShape& t, int64_t r,
                                          const QuerySide& qs, const BackwardTiles& w) {
  const FloatTag d;
  const int64_t N = row_vector();
  hn::Vec<FloatTag> lse_safe[G], dsum[G];
  for (int g = 0; g < G; ++g) {
    const auto lse = hn::Load(d, qs.lse + r + g * N);
    lse_safe[g] = hn::IfThenZeroElse(hn::Eq(lse, hn::Set(d, kNegInf)), lse);
    dsum[g] = hn::Load(d, qs.dsum + r + g * N);
  }
  for (int64_t c = 0; c < kTileK; ++c)
    for (int g = 0; g < G; ++g) {
      float* sp = w.s_t + c * t.rows_pad + r + g * N;
      float* dp = w.dp_t + c * t.rows_pad + r + g * N;
      const auto prob = softmax_exp(hn::Sub(hn::Load(d, sp), lse_safe[g]));
      hn::Store(prob, d, sp);
      if (p.dropout_p > 0.0f) continue;  // dS needs Z first: done by the caller
      // softmax: dS = P ∘ (dP - D), exactly 0 where P is (garbage in masked V cannot leak)
      const auto ds = hn::Mul(prob, hn::Sub(hn::Load(d, dp), dsum[g]));
      hn::Store(hn::IfThenElseZero(hn::Ne(prob, hn::Zero(d)), ds), d, dp);
    }
}

// K and V rows of a key tile: packed in w, or where they lie.
struct KeyTile {
  const float* k;
  int64_t k_stride;
  const float* v;
  int64_t v_stride;
};

// For keys [j0, j0 + nk) and a packed query block: Sᵀ <- Pᵀ (∘ Z) and dpᵀ <- dS'ᵀ, the
// gradient w.r.t. scale·QKᵀ (through the softcap when set), or with through_softcap false
// dSᵀ, the gradient w.r.t. the modified score (d(bias): the bias is added after the softcap).
void probs_and_dscores(const AttentionParams& p, const SequenceSpan& s, const TileShape& t, int64_t hkv,
                       int64_t i0, int64_t n, int64_t j0, int64_t nk, const KeyTile& kv, const QuerySide& qs,
                       const BackwardTiles& w, bool through_softcap = true) {
  const int64_t N = row_vector();
  const bool softcap = p.softcap > 0.0f && through_softcap;
  // forward: Sᵀ = K Qᵀ, then the modifiers; P = exp(S - lse)
  if (p.decode)
    with_float_type(p.k.dtype, [&](auto k_type) {
      decode_scores<typename decltype(k_type)::type>(p, t, s, hkv, p.group * n, j0, nk, qs.q_t, w.s_t, 1, t.rows_pad,
                                                     [](int64_t) {});
    });
  else if (use_bf16_dot(p)) bf16_scores_tile(p, s, hkv, j0, nk, qs.q_pairs, t.rows_pad, w.k_pairs, w.s_t);  // the forward's
  else scores_t(qs.q_t, kv.k, kv.k_stride, p.D, t, w.s_t);
  if (softcap) std::copy_n(w.s_t, kTileK * t.rows_pad, w.raw_t);
  modify_scores(p, s, hkv, i0, n, j0, nk, t, w.s_t);
  // forward: O = P V, so dPᵀ = V dOᵀ
  outer_product(qs.do_t, t.rows_pad, kv.v, kv.v_stride, 1, p.Dv, kTileK, t.rows_pad, w.dp_t, false);
  int64_t r = 0;
  for (; r + 4 * N <= t.rows_pad; r += 4 * N) probs_and_dscores_vectors<4>(p, t, r, qs, w);
  for (; r < t.rows_pad; r += 2 * N) probs_and_dscores_vectors<2>(p, t, r, qs, w);
  if (p.dropout_p > 0.0f) {
    // dropout: O = (P ∘ Z) V, so dP = Z ∘ (dO Vᵀ) and dV uses P ∘ Z
    for (int64_t r = 0; r < p.group * n; ++r) {
      dropout_row(p, s, hkv * p.group + r / n, i0 + r % n, j0, nk, w.row);
      for (int64_t c = 0; c < kTileK; ++c) {
        float& prob = w.s_t[c * t.rows_pad + r];
        float& dp = w.dp_t[c * t.rows_pad + r];
        const float z = c < nk ? w.row[c] : 0.0f;
        dp = prob == 0.0f ? 0.0f : prob * (z * dp - qs.dsum[r]);
        prob *= z;
      }
    }
    for (int64_t r = p.group * n; r < t.rows_pad; ++r)
      for (int64_t c = 0; c < kTileK; ++c) w.dp_t[c * t.rows_pad + r] = 0.0f;
  }
  // forward: s = c·tanh(raw / c), so d raw = ds · (1 - tanh²(raw / c))
  if (softcap) softcap_backward_tile(p, t, w.raw_t, w.dp_t);
}

// sum[e] += part[e] for e in [0, n) (n a multiple of the vector length).
inline void add_tile(const float* HWY_RESTRICT part, int64_t n, float* HWY_RESTRICT sum) {
  const FloatTag d;
  for (int64_t e = 0; e < n; e += row_vector()) hn::Store(hn::Add(hn::Load(d, sum + e), hn::Load(d, part + e)), d, sum + e);
}

// dK, dV of a key block over the query blocks that see it; with_dq also adds each query
// block's dQ += dS K into its query side, over the keys that dq_item would use for the
// block (up to its last row's reach), so the sums match dq_item's bit for bit.
void dk_dv_item(const AttentionParams& p, const BackwardParams& g, const TileShape& t, float* shared,
                const WorkItem& item, const BackwardTiles& w, bool with_dq) {
  // Items of extra keys (plan_backward: never straddling k_extra_begin) run on the
  // sequence's extra_span, where every query block sees every key:
  //   dV_j = Σ_i (P ∘ Z)_ij dO_i,  dK_j = scale Σ_i dS'_ij Q_i   over all rows i
  const SequenceSpan& seq = p.seqs[size_t(item.seq)];
  const bool extra = seq.k_extra > 0 && item.begin >= seq.k_extra_begin;
  const SequenceSpan s = extra ? extra_span(seq) : seq;
  const int64_t hkv = item.head, j0 = item.begin - (extra ? seq.k_extra_begin : 0), n_out = item.end - item.begin;
  // Keys past k_len (key padding) are never attended: their gradients are zero.
  const int64_t nk = std::clamp<int64_t>(s.k_len - j0, 0, n_out);
  std::fill_n(w.dk, kTileK * t.d_vec, 0.0f);
  std::fill_n(w.dv, kTileK * t.dv_vec, 0.0f);
  if (nk > 0) {
    pack_rows(p.k, s, hkv, j0, nk, p.D, t.d_vec, w.k);
    pack_rows(p.v, s, hkv, j0, nk, p.Dv, p.Dv, w.v);
    const IndexRange rows = query_range(p, s, j0, j0 + nk);
    const int64_t first_block = rows.lo / p.group_rows;
    const int64_t end_block = (rows.hi + p.group_rows - 1) / p.group_rows;
    const int64_t nblocks = (s.q_len + p.group_rows - 1) / p.group_rows;
    for (int64_t blk = first_block; blk < end_block; ++blk) {
      const int64_t i0 = blk * p.group_rows, n = std::min(p.group_rows, s.q_len - i0);
      const QuerySide qs = query_side(p, t, shared, p.group_item_first[size_t(item.seq)] + hkv * nblocks + blk);
      probs_and_dscores(p, s, t, hkv, i0, n, j0, nk, {w.k, t.d_vec, w.v, p.Dv}, qs, w);
      const int64_t rows_n = p.group * n;
      // dV += Pᵀ dO ;  dK += dSᵀ Q   (scale applied once at the end), summed block by block:
      // each query block's share apart, then added to the total, so a long query axis is
      // (rows per block + blocks) roundings deep, not Lq (Lq = 4000: dV 3-7x PyTorch's f32
      // error with one running sum).
      const bool first = blk == first_block;
      outer_product(qs.dout, t.dv_vec, w.s_t, t.rows_pad, 1, rows_n, kTileK, t.dv_vec, first ? w.dv : w.dv_block, false);
      outer_product(qs.q, t.d_vec, w.dp_t, t.rows_pad, 1, rows_n, kTileK, t.d_vec, first ? w.dk : w.dk_block, false);
      if (!first) {
        add_tile(w.dv_block, kTileK * t.dv_vec, w.dv);
        add_tile(w.dk_block, kTileK * t.d_vec, w.dk);
      }
      if (with_dq) {
        const int64_t nk_q = std::min(nk, key_range(p, s, i0 + n - 1).hi - j0);
        const float* k = w.k;
        if (p.keys_maskable || (!tile_is_plain(p, s, i0, n, j0, nk_q) &&
                                unattended_keys_nonfinite(w.dp_t, nk_q, t, w.k, t.d_vec, p.D))) {  // as dq_item: 0 · garbage K
          std::copy_n(w.k, kTileK * t.d_vec, w.k_dq);
          zero_unattended_rows(w.dp_t, nk_q, t, w.k_dq, t.d_vec);
          k = w.k_dq;
        }
        // dQ += dS K, the key tile's share apart first (as dq_item)
        outer_product(k, t.d_vec, w.dp_t, 1, t.rows_pad, nk_q, t.rows_pad, t.d_vec, w.dq_tile, false);
        add_tile(w.dq_tile, t.rows_pad * t.d_vec, qs.dq);
      }
    }
  }
  for (int64_t c = 0; c < n_out; ++c) {
    const int64_t j = s.k_begin + j0 + c;
    store_row(g.dk.data, g.dk.dtype, s.batch * g.dk.stride_b + j * g.dk.stride_l + hkv * g.dk.stride_h, p.D,
              w.dk + c * t.d_vec, p.scale);
    store_row(g.dv.data, g.dv.dtype, s.batch * g.dv.stride_b + j * g.dv.stride_l + hkv * g.dv.stride_h, p.Dv,
              w.dv + c * t.dv_vec, 1.0f);
  }
}

// The K and V rows of keys [j0, j0 + nk) as dq_item reads them: full f32 tiles where they
// lie (K only where the planner says dq_keys_in_place), others packed into w.
KeyTile key_tile(const AttentionParams& p, const SequenceSpan& s, const TileShape& t, int64_t hkv, int64_t j0,
                 int64_t nk, const BackwardTiles& w) {
  const bool v_in_place = p.kv_tiles_in_place && nk == kTileK, k_in_place = v_in_place && p.dq_keys_in_place;
  if (!k_in_place) pack_rows(p.k, s, hkv, j0, nk, p.D, t.d_vec, w.k);
  if (!v_in_place) pack_rows(p.v, s, hkv, j0, nk, p.Dv, p.Dv, w.v);
  return {k_in_place ? kv_row<float>(p.k, s, hkv, j0) : w.k, k_in_place ? p.k.stride_l : t.d_vec,
          v_in_place ? kv_row<float>(p.v, s, hkv, j0) : w.v, v_in_place ? p.v.stride_l : p.Dv};
}

// dQ rows of a group item from its accumulator (rows_pad x d_vec, scale still to apply).
void store_dq(const AttentionParams& p, const BackwardParams& g, const TileShape& t, const SequenceSpan& s,
              int64_t hkv, int64_t i0, int64_t n, const float* dq) {
  for (int64_t r = 0; r < p.group * n; ++r)
    store_row(g.dq.data, g.dq.dtype, item_row_offset(g.dq, p, s, hkv, i0, n, r), p.D, dq + r * t.d_vec, p.scale);
}

void dq_item(const AttentionParams& p, const BackwardParams& g, const TileShape& t, float* shared, int64_t index,
             const BackwardTiles& w) {
  const WorkItem& item = p.group_items[size_t(index)];
  const SequenceSpan& s = p.seqs[size_t(item.seq)];
  const int64_t hkv = item.head, i0 = item.begin, n = item.end - item.begin;
  const QuerySide qs = query_side(p, t, shared, index);
  std::fill_n(w.dq, t.rows_pad * t.d_vec, 0.0f);
  // Keys [j_begin, j_end) of span span: the input keys, then the extra keys on extra_span
  // (in the order of the fused path's kv_items, so both give the same bits).
  const auto keys = [&](const SequenceSpan& span, int64_t j_begin, int64_t j_end) {
    for (int64_t j0 = j_begin; j0 < j_end; j0 += kTileK) {
      const int64_t nk = std::min(kTileK, j_end - j0);
      KeyTile kv = key_tile(p, span, t, hkv, j0, nk, w);
      probs_and_dscores(p, span, t, hkv, i0, n, j0, nk, kv, qs, w);
      // 0 · garbage K: masked keys (packed), or keys no row attends whose K holds NaN or inf
      // (window and causal edges: only tiles that are not plain have such keys; K packed
      // first when read in place)
      bool zero_keys = p.keys_maskable;  // then K is packed (plan: dq_keys_in_place)
      if (!zero_keys && !tile_is_plain(p, span, i0, n, j0, nk) &&
          unattended_keys_nonfinite(w.dp_t, nk, t, kv.k, kv.k_stride, p.D)) {
        if (kv.k != w.k) pack_rows(p.k, span, hkv, j0, nk, p.D, t.d_vec, w.k);
        kv.k = w.k, kv.k_stride = t.d_vec, zero_keys = true;
      }
      if (zero_keys) zero_unattended_rows(w.dp_t, nk, t, w.k, t.d_vec);
      // dQ += dS K   (scale applied once at the end), the key tile's share summed apart
      // first: a long key axis is (keys per tile + tiles) roundings deep (Lk = 4000-8000: dQ
      // was 3-8x PyTorch's f32 error with one running sum)
      outer_product(kv.k, kv.k_stride, w.dp_t, 1, t.rows_pad, nk, t.rows_pad, t.d_vec, w.dq_tile, false);
      add_tile(w.dq_tile, t.rows_pad * t.d_vec, w.dq);
    }
  };
  keys(s, first_tile(p, s, i0), key_range(p, s, i0 + n - 1).hi);
  if (s.k_extra > 0) keys(extra_span(s), 0, s.k_extra);
  store_dq(p, g, t, s, hkv, i0, n, w.dq);
}

// d(bias) = dS reduced (summed) over the dims along which the bias was broadcast. An item
// owns one block of the dbias tensor (BackwardParams::bias_items, SIMD layout: target
// batch, target kv head with its group's heads, rows of one group item) and sums its
// sources in one fixed order: batch, kv head, query block, key tile, row (head-major), key.
// No atomics, so the bits depend on no thread count. dS comes from probs_and_dscores on
// the forward's own scores (as dq_item), taken before the softcap's chain rule.
// Not combined with varlen (validate.cpp), so sequence b is batch b. Extra keys have no
// bias: only the input keys' range is visited.
void dbias_item(const AttentionParams& p, const BackwardParams& g, const TileShape& t, float* shared,
                const WorkItem& item, const BackwardTiles& w) {
  const int64_t b_lo = g.dbias_reduce_b ? 0 : item.seq, b_hi = g.dbias_reduce_b ? int64_t(p.seqs.size()) : item.seq + 1;
  const int64_t hkv_lo = g.dbias_reduce_h ? 0 : item.head, hkv_hi = g.dbias_reduce_h ? p.Hkv : item.head + 1;
  const int64_t h_first = g.dbias_reduce_h ? 0 : item.head * p.group, heads_out = g.dbias_reduce_h ? 1 : p.group;
  const int64_t i_first = g.dbias_reduce_i ? 0 : item.begin, rows_out = g.dbias_reduce_i ? 1 : item.end - item.begin;
  const int64_t cols_out = g.dbias_reduce_j ? 1 : p.Lk - p.extra_keys;  // dbias has no extra columns
  float* const block = g.dbias + item.seq * g.dbias_stride_b;  // item.seq is 0 when b is reduced
  const auto target = [&](int64_t h, int64_t i, int64_t j) -> float& {
    return block[h * g.dbias_stride_h + i * g.dbias_stride_i + j * g.dbias_stride_j];
  };
  // Keys no row of a block sees get no term: zero the whole block, then accumulate in place.
  for (int64_t h = h_first; h < h_first + heads_out; ++h)
    for (int64_t i = i_first; i < i_first + rows_out; ++i)
      for (int64_t j = 0; j < cols_out; ++j) target(h, i, j) = 0.0f;
  for (int64_t b = b_lo; b < b_hi; ++b) {
    const SequenceSpan& s = p.seqs[size_t(b)];
    const int64_t nblocks = (s.q_len + p.group_rows - 1) / p.group_rows;
    const int64_t blk_lo = g.dbias_reduce_i ? 0 : item.begin / p.group_rows;
    const int64_t blk_hi = g.dbias_reduce_i ? nblocks : blk_lo + 1;
    for (int64_t hkv = hkv_lo; hkv < hkv_hi; ++hkv)
      for (int64_t blk = blk_lo; blk < blk_hi; ++blk) {
        const int64_t i0 = blk * p.group_rows, n = std::min(p.group_rows, s.q_len - i0);
        const QuerySide qs = query_side(p, t, shared, p.group_item_first[size_t(b)] + hkv * nblocks + blk);
        const int64_t j_begin = first_tile(p, s, i0), j_end = key_range(p, s, i0 + n - 1).hi;
        for (int64_t j0 = j_begin; j0 < j_end; j0 += kTileK) {
          const int64_t nk = std::min(kTileK, j_end - j0);
          probs_and_dscores(p, s, t, hkv, i0, n, j0, nk, key_tile(p, s, t, hkv, j0, nk, w), qs, w,
                            /*through_softcap=*/false);
          for (int64_t r = 0; r < p.group * n; ++r) {
            const int64_t h = g.dbias_reduce_h ? 0 : hkv * p.group + r / n, i = g.dbias_reduce_i ? 0 : i0 + r % n;
            add_dbias_column(w.dp_t + r, t.rows_pad, nk, &target(h, i, g.dbias_reduce_j ? 0 : j0), g.dbias_stride_j,
                             g.dbias_reduce_j);
          }
        }
      }
  }
}

// Passes 1 and 2 fused for (sequence, kv head) u: its key blocks in order (dk_dv_item with
// dQ), then the dQ of its query blocks.
void dk_dv_dq_unit(const AttentionParams& p, const BackwardParams& g, const TileShape& t, float* shared,
                   int64_t u, const BackwardTiles& w) {
  const int64_t seq = u / p.Hkv, hkv = u % p.Hkv;
  const SequenceSpan& s = p.seqs[size_t(seq)];
  const int64_t nblocks = (s.q_len + p.group_rows - 1) / p.group_rows;
  const int64_t first_item = p.group_item_first[size_t(seq)] + hkv * nblocks;
  for (int64_t blk = 0; blk < nblocks; ++blk)
    std::fill_n(query_side(p, t, shared, first_item + blk).dq, t.rows_pad * t.d_vec, 0.0f);
  for (int64_t it = g.kv_item_first[size_t(u)]; it < g.kv_item_first[size_t(u) + 1]; ++it)
    dk_dv_item(p, g, t, shared, g.kv_items[size_t(it)], w, /*with_dq=*/true);
  for (int64_t blk = 0; blk < nblocks; ++blk) {
    const int64_t i0 = blk * p.group_rows, n = std::min(p.group_rows, s.q_len - i0);
    store_dq(p, g, t, s, hkv, i0, n, query_side(p, t, shared, first_item + blk).dq);
  }
}

}  // namespace

void BackwardSimdScratchFloats(const AttentionParams& p, int64_t* per_thread, int64_t* shared) {
  const TileShape t = tile_shape(p);
  ScratchCarver sizing;
  carve(p, t, sizing);
  *per_thread = sizing.used;
  *shared = int64_t(p.group_items.size()) * query_side_floats(p, t);
}

void FlashBackwardSimd(const AttentionParams& p, const BackwardParams& g, float* scratch,
                       int64_t scratch_per_thread) {
  const TileShape t = tile_shape(p);
  float* shared = scratch + int64_t(p.num_threads) * scratch_per_thread;
  const int64_t nq = int64_t(p.group_items.size()), nkv = int64_t(g.kv_items.size());
  const int64_t nbias = int64_t(g.bias_items.size());
#pragma omp parallel num_threads(p.num_threads)
  {
    ScratchCarver thread_scratch{scratch + omp_get_thread_num() * scratch_per_thread};
    const BackwardTiles w = carve(p, t, thread_scratch);
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < nq; ++it)
      pack_query_side(p, g, t, p.group_items[size_t(it)], query_side(p, t, shared, it), w.row);
    // (implicit barrier: every query side is packed)
    if (fuse_dq(p)) {
#pragma omp for schedule(dynamic, 1)
      for (int64_t u = 0; u < kv_pairs(p); ++u) dk_dv_dq_unit(p, g, t, shared, u, w);
    } else {
#pragma omp for schedule(dynamic, 1) nowait
      for (int64_t it = 0; it < nkv; ++it) dk_dv_item(p, g, t, shared, g.kv_items[size_t(it)], w, false);
#pragma omp for schedule(dynamic, 1)
      for (int64_t it = 0; it < nq; ++it) dq_item(p, g, t, shared, it, w);
    }
    // (implicit barrier) d(bias): reads only the packed query sides and the inputs.
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < nbias; ++it) dbias_item(p, g, t, shared, g.bias_items[size_t(it)], w);
  }
  // dsink_h = -Σ_{b,i} exp(sink_h - lse_i) · D_i, in a fixed order.
  if (g.dsinks) {
    for (int64_t h = 0; h < p.H; ++h) {
      const float sink = sink_logit(p, h);
      double sum = 0.0;  // a reduction over B·Lq rows: double keeps it exact to fp32
      for (int64_t it = 0; it < nq; ++it) {
        const WorkItem& item = p.group_items[size_t(it)];
        if (item.head != h / p.group) continue;
        const QuerySide qs = query_side(p, t, shared, it);
        const int64_t n = item.end - item.begin;
        for (int64_t r = (h % p.group) * n; r < (h % p.group + 1) * n; ++r)
          if (qs.lse[r] != kNegInf) sum += double(std::exp(sink - qs.lse[r])) * double(qs.dsum[r]);
      }
      g.dsinks[h * g.dsinks_stride] = float(-sum);
    }
  }
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace detail
}  // namespace multihead
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace multihead::detail {
HWY_EXPORT(FlashBackwardSimd);
HWY_EXPORT(BackwardSimdScratchFloats);

void flash_backward_simd(const AttentionParams& p, const BackwardParams& g, float* scratch,
                         int64_t scratch_per_thread) {
  HWY_DYNAMIC_DISPATCH(FlashBackwardSimd)(p, g, scratch, scratch_per_thread);
}
void backward_simd_scratch_floats(const AttentionParams& p, int64_t* per_thread, int64_t* shared) {
  HWY_DYNAMIC_DISPATCH(BackwardSimdScratchFloats)(p, per_thread, shared);
}
}  // namespace multihead::detail
#endif
