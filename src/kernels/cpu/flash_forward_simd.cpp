// SIMD forward (Highway: one copy per target, AVX-512 and AVX2 on x86). The same
// math as the portable kernel (flash_forward.cpp), shaped for the machine:
//   - a work item is (sequence, kv head, block of queries) and covers all H / Hkv query
//     heads of the group, so each K/V tile is loaded and converted once per group;
//   - Sᵀ = K Qᵀ and Oᵀ += Vᵀ Pᵀ are register-blocked micro-kernels (simd_tiles-inl.hpp);
//   - the online softmax runs on vectors of rows with Highway's Exp;
//   - decode-shaped items (a few rows, many keys) run along D and Dv instead, and their
//     keys are split into p.kv_splits chunks (fixed by shape) merged by LSE.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/flash_forward_simd.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include <hwy/cache_control.h>
#include <omp.h>

#include <cstring>

#include "kernels/cpu/bf16_dot.hpp"
#include "kernels/cpu/simd_tiles-inl.hpp"
#include "kernels/kernels.hpp"

HWY_BEFORE_NAMESPACE();
namespace multihead {
namespace detail {
namespace HWY_NAMESPACE {

namespace {

// One thread's tiles; every tile starts on a 64-byte boundary.
struct ForwardTiles {
  float* q_t;   // D x rows_pad        Qᵀ, scaled (tiled path)
  float* q;     // rows_pad x d_vec    Q, scaled (decode path)
  float* q_heads;  // Hkv x rows x d_vec  every kv head's Q, scaled (decode chunks)
  float* k;     // kTileK x d_vec      K rows
  float* v;     // kTileK x dv_vec     V rows
  float* s_t;   // kTileK x rows_pad   Sᵀ, then Pᵀ (tiled) / S, then P (decode, row-major)
  float* o;     // dv_vec x rows_pad   Oᵀ (tiled) / rows x dv_vec O (decode)
  float* o_rows;  // 16 x dv_vec       rows of Oᵀ transposed back (finalize)
  float* m;     // rows_pad            running max
  float* l;     // rows_pad            running sum
  float* corr;  // rows_pad            e^(m_old - m_new)
  float* row;   // max(D, Dv, kTileK)  conversion buffer
  float* stats;  // rows_pad x 3       RowStats (head_stats)
  // bf16 pairs for vdpbf16ps (bf16 inputs on AVX512-BF16), one uint32 per pair:
  uint32_t* q_pairs;  // D/2 x rows_pad     Qᵀ, unscaled
  uint32_t* k_pairs;  // kTileK x D/2       K rows
  uint32_t* v_pairs;  // kTileK/2 x dv_vec  V, keys paired
  uint32_t* p_pairs;  // kTileK/2 x rows_pad Pᵀ, keys paired
};

ForwardTiles carve(const AttentionParams& p, const TileShape& t, ScratchCarver& take) {
  ForwardTiles w;
  w.q_t = take(std::max(p.D, t.d_vec) * t.rows_pad);
  w.q = take(t.rows_pad * t.d_vec);
  w.q_heads = take(p.kv_splits > 1 ? p.Hkv * t.rows * t.d_vec : 0);
  w.k = take(kTileK * t.d_vec);
  w.v = take(kTileK * t.dv_vec);
  w.s_t = take(kTileK * t.rows_pad);
  w.o = take(t.dv_vec * t.rows_pad);
  w.o_rows = take(16 * t.dv_vec);
  w.m = take(t.rows_pad);
  w.l = take(t.rows_pad);
  w.corr = take(t.rows_pad);
  w.row = take(std::max({p.D, p.Dv, kTileK}));
  w.stats = take(3 * t.rows_pad);
  static_assert(sizeof(RowStats) == 3 * sizeof(float));
  const int64_t d2 = (p.D + 1) / 2;
  w.q_pairs = reinterpret_cast<uint32_t*>(take(d2 * t.rows_pad));
  w.k_pairs = reinterpret_cast<uint32_t*>(take(kTileK * d2));
  w.v_pairs = reinterpret_cast<uint32_t*>(take(kTileK / 2 * t.dv_vec));
  w.p_pairs = reinterpret_cast<uint32_t*>(take(kTileK / 2 * t.rows_pad));
  return w;
}

// Where an item's running output lives: o[r·row_stride + a·col_stride] for row r, dim a.
struct OutputLayout {
  int64_t row_stride, col_stride;
};

// Online softmax down the key axis of Sᵀ for G row vectors from row r at once (G
// independent max and sum chains: one chain alone left the loop latency-bound):
//   m' = max(m, max_c s);  corr = e^(m - m');  l = l·corr + Σ_c e^(s - m');  Sᵀ <- e^(s - m')
// Rows with nothing allowed so far keep m = -inf, l = 0 and P = 0.
template <int G>
HWY_INLINE void online_softmax_vectors(const TileShape& t, int64_t r, float* HWY_RESTRICT s_t, float* HWY_RESTRICT m,
                                       float* HWY_RESTRICT l, float* HWY_RESTRICT corr) {
  const FloatTag d;
  const int64_t N = row_vector();
  const auto neg_inf = hn::Set(d, kNegInf);
  hn::Vec<FloatTag> m_new[G], m_safe[G], sum[G];
  for (int g = 0; g < G; ++g) m_new[g] = hn::Load(d, m + r + g * N);
  for (int64_t c = 0; c < kTileK; ++c)
    for (int g = 0; g < G; ++g) m_new[g] = hn::Max(m_new[g], hn::Load(d, s_t + c * t.rows_pad + r + g * N));
  for (int g = 0; g < G; ++g) {
    m_safe[g] = hn::IfThenZeroElse(hn::Eq(m_new[g], neg_inf), m_new[g]);  // -inf - -inf is NaN
    sum[g] = hn::Zero(d);
  }
  for (int64_t c = 0; c < kTileK; ++c)
    for (int g = 0; g < G; ++g) {
      float* at = s_t + c * t.rows_pad + r + g * N;
      const auto e = softmax_exp(hn::Sub(hn::Load(d, at), m_safe[g]));
      hn::Store(e, d, at);
      sum[g] = hn::Add(sum[g], e);
    }
  for (int g = 0; g < G; ++g) {
    const auto c = softmax_exp(hn::Sub(hn::Load(d, m + r + g * N), m_safe[g]));
    hn::Store(hn::MulAdd(hn::Load(d, l + r + g * N), c, sum[g]), d, l + r + g * N);
    hn::Store(m_new[g], d, m + r + g * N);
    hn::Store(c, d, corr + r + g * N);
  }
}

// online_softmax_vectors over every row vector of Sᵀ (rows_pad is a multiple of 2 vectors).
void online_softmax_columns(const TileShape& t, float* HWY_RESTRICT s_t, float* HWY_RESTRICT m,
                            float* HWY_RESTRICT l, float* HWY_RESTRICT corr) {
  const int64_t N = row_vector();
  int64_t r = 0;
  for (; r + 4 * N <= t.rows_pad; r += 4 * N) online_softmax_vectors<4>(t, r, s_t, m, l, corr);
  for (; r < t.rows_pad; r += 2 * N) online_softmax_vectors<2>(t, r, s_t, m, l, corr);
}

// The same for one row of a row-major score tile s (kTileK keys): returns the correction.
float online_softmax_row(float* HWY_RESTRICT s, float& m, float& l) {
  const FloatTag d;
  const int64_t N = row_vector();
  const auto neg_inf = hn::Set(d, kNegInf);
  auto vmax = neg_inf;
  for (int64_t c = 0; c < kTileK; c += N) vmax = hn::Max(vmax, hn::Load(d, s + c));
  const float m_new = std::max(m, hn::GetLane(hn::MaxOfLanes(d, vmax)));
  const auto vm = hn::Set(d, m_new == kNegInf ? 0.0f : m_new);
  auto vsum = hn::Zero(d);
  for (int64_t c = 0; c < kTileK; c += N) {
    const auto x = hn::Load(d, s + c);
    const auto e = softmax_exp(hn::Sub(x, vm));
    hn::Store(e, d, s + c);
    vsum = hn::Add(vsum, e);
  }
  const float correction = m == kNegInf ? 0.0f : std::exp(m - m_new);
  l = l * correction + hn::GetLane(hn::SumOfLanes(d, vsum));
  m = m_new;
  return correction;
}

// Oᵀ[a, :] *= corr for every output dim a, skipping row vectors whose running max held
// (corr = 1: most of them after the first tiles).
void rescale_output_t(const TileShape& t, const float* HWY_RESTRICT corr, float* HWY_RESTRICT o_t) {
  const FloatTag d;
  const int64_t N = row_vector();
  for (int64_t r = 0; r < t.rows_pad; r += N) {
    const auto c = hn::Load(d, corr + r);
    if (hn::AllTrue(d, hn::Eq(c, hn::Set(d, 1.0f)))) continue;
    for (int64_t a = 0; a < t.dv_vec; ++a) {
      float* at = o_t + a * t.rows_pad + r;
      hn::Store(hn::Mul(hn::Load(d, at), c), d, at);
    }
  }
}

void apply_dropout(const AttentionParams& p, const SequenceSpan& s, int64_t hkv, int64_t i0, int64_t n,
                   int64_t j0, int64_t nk, float* probs, int64_t row_stride, int64_t col_stride, float* row) {
  for (int64_t r = 0; r < p.group * n; ++r) {
    dropout_row(p, s, hkv * p.group + r / n, i0 + r % n, j0, nk, row);
    for (int64_t c = 0; c < nk; ++c) probs[r * row_stride + c * col_stride] *= row[c];
  }
}

// K rows [j0, j0 + nk) of a bf16 tensor as pairs (kTileK x D/2), zero-padded.
void pack_key_pairs(const AttentionParams& p, const SequenceSpan& s, int64_t hkv, int64_t j0, int64_t nk,
                    uint32_t* out) {
  const int64_t d2 = (p.D + 1) / 2;
  uint16_t* halves = reinterpret_cast<uint16_t*>(out);
  std::fill_n(out, kTileK * d2, 0u);
  for (int64_t c = 0; c < nk; ++c) {
    const uint16_t* src = static_cast<const uint16_t*>(p.k.data) + s.batch * p.k.stride_b +
                          (s.k_begin + j0 + c) * p.k.stride_l + hkv * p.k.stride_h;
    std::copy_n(src, p.D, halves + c * 2 * d2);
  }
}

// True when rows [j0, j0 + kTileK) of k can serve as bf16 pairs where they lie: whole pairs
// (even D), each row starting on a pair boundary.
bool key_pairs_in_place(const AttentionParams& p, const SequenceSpan& s, int64_t hkv, int64_t j0, int64_t nk) {
  return nk == kTileK && p.D % 2 == 0 && p.k.stride_l % 2 == 0 &&
         reinterpret_cast<uintptr_t>(kv_row<bf16>(p.k, s, hkv, j0)) % 4 == 0;
}

// Keys [ja, jb) of an item on vdpbf16ps: Sᵀ = K Qᵀ and Oᵀ += Vᵀ Pᵀ over bf16 pairs. Full
// K tiles are read where they lie; V is paired straight from its bf16 rows (exact).
void accumulate_tiled_bf16(const AttentionParams& p, const TileShape& t, const SequenceSpan& s, int64_t hkv,
                           int64_t i0, int64_t n, int64_t ja, int64_t jb, const ForwardTiles& w) {
  const int64_t d2 = (p.D + 1) / 2;
  // Qᵀ unscaled (bf16 values stay exact), an even number of dims, then paired.
  pack_item_rows_t(p.q, p.D, 1.0f, p, s, hkv, i0, n, t, w.row, w.q_t);
  std::fill(w.q_t + p.D * t.rows_pad, w.q_t + 2 * d2 * t.rows_pad, 0.0f);
  bf16_pair_rows(w.q_t, t.rows_pad, d2, t.rows_pad, w.q_pairs, t.rows_pad);
  std::fill_n(w.o, t.dv_vec * t.rows_pad, 0.0f);
  for (int64_t j0 = ja; j0 < jb; j0 += kTileK) {
    const int64_t nk = std::min(kTileK, jb - j0);
    const uint32_t* k_pairs = w.k_pairs;
    int64_t k_stride = d2;
    if (key_pairs_in_place(p, s, hkv, j0, nk)) {
      k_pairs = reinterpret_cast<const uint32_t*>(kv_row<bf16>(p.k, s, hkv, j0));
      k_stride = p.k.stride_l / 2;
    } else {
      pack_key_pairs(p, s, hkv, j0, nk, w.k_pairs);
    }
    bf16_outer_product(w.q_pairs, t.rows_pad, k_pairs, k_stride, 1, d2, kTileK, t.rows_pad, w.s_t, false, p.scale);
    modify_scores(p, s, hkv, i0, n, j0, nk, t, w.s_t);
    online_softmax_columns(t, w.s_t, w.m, w.l, w.corr);
    rescale_output_t(t, w.corr, w.o);
    if (p.dropout_p > 0.0f) apply_dropout(p, s, hkv, i0, n, j0, nk, w.s_t, 1, t.rows_pad, w.row);
    // Oᵀ += Vᵀ Pᵀ over key pairs (a key past nk has P = 0 and a zero V row)
    const int64_t nk2 = (nk + 1) / 2;
    bf16_pair_source_rows(reinterpret_cast<const uint16_t*>(kv_row<bf16>(p.v, s, hkv, j0)), p.v.stride_l, nk, p.Dv,
                          nk2, w.v_pairs, t.dv_vec);
    if (p.mask.data || p.bias.data)
      for (int64_t c = 0; c < nk; ++c)
        if (key_unattended(w.s_t, c, t)) bf16_clear_pair_half(w.v_pairs, t.dv_vec, c, p.Dv);
    bf16_pair_rows(w.s_t, t.rows_pad, nk2, t.rows_pad, w.p_pairs, t.rows_pad);
    bf16_outer_product(w.p_pairs, t.rows_pad, w.v_pairs, 1, t.dv_vec, nk2, p.Dv, t.rows_pad, w.o, true);
  }
}

// Keys [ja, jb) of an item, tiled path: rows along vectors, Oᵀ in w.o. Full f32 tiles are
// read where they lie (V only when no key can be masked for every row: see
// zero_unattended_rows); others are packed.
void accumulate_tiled(const AttentionParams& p, const TileShape& t, const SequenceSpan& s, int64_t hkv, int64_t i0,
                      int64_t n, int64_t ja, int64_t jb, const ForwardTiles& w) {
  pack_queries_t(p, s, hkv, i0, n, t, w.row, w.q_t);
  std::fill_n(w.o, t.dv_vec * t.rows_pad, 0.0f);
  const bool f32 = p.k.dtype == DType::kF32, maskable = p.mask.data || p.bias.data;
  for (int64_t j0 = ja; j0 < jb; j0 += kTileK) {
    const int64_t nk = std::min(kTileK, jb - j0);
    const bool k_in_place = f32 && nk == kTileK, v_in_place = k_in_place && !maskable;
    if (!k_in_place) pack_rows(p.k, s, hkv, j0, nk, p.D, p.D, w.k);
    if (!v_in_place) pack_rows(p.v, s, hkv, j0, nk, p.Dv, t.dv_vec, w.v);
    const float* k_rows = k_in_place ? kv_row<float>(p.k, s, hkv, j0) : w.k;
    const float* v_rows = v_in_place ? kv_row<float>(p.v, s, hkv, j0) : w.v;
    const int64_t k_stride = k_in_place ? p.k.stride_l : p.D, v_stride = v_in_place ? p.v.stride_l : t.dv_vec;
    scores_t(w.q_t, k_rows, k_stride, p.D, t, w.s_t);
    modify_scores(p, s, hkv, i0, n, j0, nk, t, w.s_t);
    online_softmax_columns(t, w.s_t, w.m, w.l, w.corr);
    rescale_output_t(t, w.corr, w.o);
    // dropout acts on P·V only: l keeps every weight
    if (p.dropout_p > 0.0f) apply_dropout(p, s, hkv, i0, n, j0, nk, w.s_t, 1, t.rows_pad, w.row);
    if (maskable) zero_unattended_rows(w.s_t, nk, t, w.v, t.dv_vec);
    // Oᵀ += Vᵀ Pᵀ
    outer_product(w.s_t, t.rows_pad, v_rows, 1, v_stride, nk, p.Dv, t.rows_pad, w.o, true);
  }
}

// O[r·o_stride + a] += Σ_c P[r·p_stride + c] · V[c, a] for rows [0, rows), dims [0, Dv) and
// keys [0, nk): the decode path's P·V with V rows (of T, v_stride apart) read once per
// block of 4 rows, each piece of a row straight into a register.
template <int R, int W, typename T>
HWY_INLINE void weighted_block(const float* HWY_RESTRICT P, int64_t p_stride, const T* HWY_RESTRICT v,
                               int64_t v_stride, int64_t nk, float* HWY_RESTRICT o, int64_t o_stride) {
  const FloatTag d;
  const int64_t N = row_vector();
  hn::Vec<FloatTag> acc[R][W];
  for (int r = 0; r < R; ++r)
    for (int x = 0; x < W; ++x) acc[r][x] = hn::LoadU(d, o + r * o_stride + x * N);
  for (int64_t c = 0; c < nk; ++c) {
    hn::Vec<FloatTag> vc[W];
    for (int x = 0; x < W; ++x) vc[x] = load_widened(v + c * v_stride, x * N);
    for (int r = 0; r < R; ++r) {
      const auto weight = hn::Set(d, P[r * p_stride + c]);
      for (int x = 0; x < W; ++x) acc[r][x] = hn::MulAdd(weight, vc[x], acc[r][x]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int x = 0; x < W; ++x) hn::StoreU(acc[r][x], d, o + r * o_stride + x * N);
}

template <int R, typename T>
void weighted_rows_block(const float* P, int64_t p_stride, const T* v, int64_t v_stride, int64_t Dv, int64_t nk,
                         float* o, int64_t o_stride) {
  // 4 x W accumulators: 16 of AVX-512's 32 registers, 8 of AVX2's 16.
  constexpr int W = HWY_MAX_BYTES >= 64 ? 4 : 2;
  const int64_t N = row_vector();
  int64_t a = 0;
  for (; a + W * N <= Dv; a += W * N) weighted_block<R, W>(P, p_stride, v + a, v_stride, nk, o + a, o_stride);
  for (; a + N <= Dv; a += N) weighted_block<R, 1>(P, p_stride, v + a, v_stride, nk, o + a, o_stride);
  for (; a < Dv; ++a)
    for (int r = 0; r < R; ++r) {
      float sum = o[r * o_stride + a];
      for (int64_t c = 0; c < nk; ++c) sum = std::fma(P[r * p_stride + c], widen(v[c * v_stride + a]), sum);
      o[r * o_stride + a] = sum;
    }
}

template <typename T>
void weighted_rows(const float* P, int64_t p_stride, int64_t rows, const T* v, int64_t v_stride, int64_t Dv,
                   int64_t nk, float* o, int64_t o_stride) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4)
    weighted_rows_block<4>(P + r * p_stride, p_stride, v, v_stride, Dv, nk, o + r * o_stride, o_stride);
  switch (rows - r) {
    case 0: break;
    case 1: weighted_rows_block<1>(P + r * p_stride, p_stride, v, v_stride, Dv, nk, o + r * o_stride, o_stride); break;
    case 2: weighted_rows_block<2>(P + r * p_stride, p_stride, v, v_stride, Dv, nk, o + r * o_stride, o_stride); break;
    default: weighted_rows_block<3>(P + r * p_stride, p_stride, v, v_stride, Dv, nk, o + r * o_stride, o_stride); break;
  }
}

// Rows [j, k_end) of a K/V activation, for RowPrefetch.
template <typename T>
RowPrefetch prefetch_rows(const Activation& a, const SequenceSpan& s, int64_t hkv, int64_t j, int64_t k_end,
                          int64_t dim) {
  return {reinterpret_cast<const char*>(kv_row<T>(a, s, hkv, j)), a.stride_l * int64_t(sizeof(T)),
          dim * int64_t(sizeof(T)), k_end - j};
}

// How far ahead of the key being scored the decode path asks for K and V rows. Measured
// on S3 (Zen 5): 8 rows into L1 beat 32 rows into L2 by ~10%; 4 to 16 rows are within noise.
inline constexpr int64_t kPrefetchKeys = 8;

// Decode rows (p.decode) keep their running state row-major: m and l per row, O rows
// o_stride apart.
struct DecodeState {
  float* m;
  float* l;
  float* o;
  int64_t o_stride;
};

// Keys [j0, j0 + nk) of an item's decode rows (keys before jb are prefetched): S = Q Kᵀ by
// dot products along D, P·V along Dv, so no lane idles on a handful of rows. q comes from
// pack_decode_queries. K and V are read in place, except V tiles with masked keys:
// those are packed with the masked rows zeroed, so garbage there (NaN, inf) cannot reach O
// through 0 · x.
template <typename T>
void decode_tile(const AttentionParams& p, const TileShape& t, const SequenceSpan& s, int64_t hkv, int64_t i0,
                 int64_t n, int64_t j0, int64_t nk, int64_t jb, const float* q, const DecodeState& st,
                 const ForwardTiles& w) {
  const int64_t rows = p.group * n;
  const RowPrefetch k_ahead = prefetch_rows<T>(p.k, s, hkv, j0 + kPrefetchKeys, jb, p.D);
  const RowPrefetch v_ahead = prefetch_rows<T>(p.v, s, hkv, j0 + kPrefetchKeys, jb, p.Dv);
  decode_scores<T>(p, t, s, hkv, rows, j0, nk, q, w.s_t, kTileK, 1,
                    [&](int64_t c) { k_ahead(c), v_ahead(c); });  // S[r, c] = scale · q_r · k_c
  const bool plain = tile_is_plain(p, s, i0, n, j0, nk);
  for (int64_t r = 0; r < rows; ++r) {
    float* srow = w.s_t + r * kTileK;
    if (!plain) modify_scores_column(p, s, hkv * p.group + r / n, i0 + r % n, j0, nk, srow, 1);
    const float correction = online_softmax_row(srow, st.m[r], st.l[r]);
    if (correction != 1.0f)
      for (int64_t a = 0; a < p.Dv; ++a) st.o[r * st.o_stride + a] *= correction;
  }
  if (p.dropout_p > 0.0f) apply_dropout(p, s, hkv, i0, n, j0, nk, w.s_t, kTileK, 1, w.row);
  // O += P V
  if (plain) {
    weighted_rows(w.s_t, kTileK, rows, kv_row<T>(p.v, s, hkv, j0), p.v.stride_l, p.Dv, nk, st.o, st.o_stride);
    return;
  }
  pack_rows(p.v, s, hkv, j0, nk, p.Dv, t.dv_vec, w.v);
  for (int64_t c = 0; c < nk; ++c) {
    bool attended = false;
    for (int64_t r = 0; r < rows; ++r) attended |= w.s_t[r * kTileK + c] != 0.0f;
    if (!attended) std::fill_n(w.v + c * t.dv_vec, t.dv_vec, 0.0f);
  }
  weighted_rows(w.s_t, kTileK, rows, static_cast<const float*>(w.v), t.dv_vec, p.Dv, nk, st.o, st.o_stride);
}

// Keys [ja, jb) of an item, decode path: O row-major in w.o.
template <typename T>
void accumulate_decode_typed(const AttentionParams& p, const TileShape& t, const SequenceSpan& s, int64_t hkv,
                             int64_t i0, int64_t n, int64_t ja, int64_t jb, const ForwardTiles& w) {
  pack_decode_queries(p, t, s, hkv, i0, n, p.group * n, w.q);
  std::fill_n(w.o, p.group * n * t.dv_vec, 0.0f);
  for (int64_t j0 = ja; j0 < jb; j0 += kTileK)
    decode_tile<T>(p, t, s, hkv, i0, n, j0, std::min(kTileK, jb - j0), jb, w.q, {w.m, w.l, w.o, t.dv_vec}, w);
}

void accumulate_decode(const AttentionParams& p, const TileShape& t, const SequenceSpan& s, int64_t hkv,
                       int64_t i0, int64_t n, int64_t ja, int64_t jb, const ForwardTiles& w) {
  with_float_type(p.k.dtype, [&](auto type) {  // k and v share q's dtype (validate.cpp)
    accumulate_decode_typed<typename decltype(type)::type>(p, t, s, hkv, i0, n, ja, jb, w);
  });
}

// An f32 output of at least this many bytes is streamed past the caches (non-temporal
// stores, no read-for-ownership): it would not stay there anyway, and on S1 (12 MiB)
// waiting for its lines took 4% of the time.
inline constexpr int64_t kStreamOutputBytes = int64_t(8) << 20;

bool stream_output(const AttentionParams& p) {
  const int64_t N = row_vector();
  const bool whole_vectors = p.Dv % N == 0 && p.out.stride_b % N == 0 && p.out.stride_l % N == 0 &&
                             p.out.stride_h % N == 0 && reinterpret_cast<uintptr_t>(p.out.data) % 64 == 0;
  return p.out.dtype == DType::kF32 && whole_vectors &&
         p.B * p.Lq * p.H * p.Dv * int64_t(sizeof(float)) >= kStreamOutputBytes;
}

// The keys of split `chunk` of an item's key range: whole tiles, fixed by shape.
KeyRange split_range(const AttentionParams& p, const SequenceSpan& s, const WorkItem& item, int64_t chunk) {
  const int64_t j_begin = first_tile(p, s, item.begin), j_end = key_range(p, s, item.end - 1).hi;
  const int64_t len = round_up((j_end - j_begin + p.kv_splits - 1) / p.kv_splits, kTileK);
  const int64_t ja = std::min(j_end, j_begin + chunk * len);
  return {ja, std::min(j_end, ja + len)};
}

// A split's partial state in the shared scratch: m and l (rows_pad each), O (rows x Dv).
int64_t partial_floats(const AttentionParams& p, const TileShape& t) { return round_up(t.rows_pad * (p.Dv + 2), 16); }
float* partial_slot(const AttentionParams& p, const TileShape& t, float* shared, int64_t it, int64_t chunk) {
  return shared + (it * p.kv_splits + chunk) * partial_floats(p, t);
}

// Reads one word of every cache line of keys [j0, j0 + nk)'s K and V rows, all kv heads,
// in address order. A loop of plain loads keeps many misses in flight; the same misses
// met among the dot products, even with software prefetch, left S3 (K/V cold) at a third
// of the read bandwidth. Returns the words' XOR, for the caller to keep.
template <typename T>
uint32_t stream_tile(const AttentionParams& p, const SequenceSpan& s, int64_t j0, int64_t nk) {
  uint32_t x = 0;
  const auto touch = [&x](const void* row, int64_t bytes) {
    for (int64_t b = 0; b < bytes; b += 64) {
      uint32_t word;
      std::memcpy(&word, static_cast<const char*>(row) + b, sizeof(word));
      x ^= word;
    }
  };
  for (int64_t c = 0; c < nk; ++c)
    for (int64_t h = 0; h < p.Hkv; ++h) {
      touch(kv_row<T>(p.k, s, h, j0 + c), p.D * int64_t(sizeof(T)));
      touch(kv_row<T>(p.v, s, h, j0 + c), p.Dv * int64_t(sizeof(T)));
    }
  return x;
}

// Split `chunk` of every kv head of sequence `seq` (decode calls with few heads), tile by
// tile: each tile's K and V rows of all heads (side by side in the usual (B, L, Hkv, D)
// layout) are first streamed into the caches, then each head computes on them. S3 cold:
// f32 1.18 -> 0.95-1.0 ms, bf16 0.9 -> 0.63-0.8 ms; cache-resident K/V pay the extra pass
// (f32 0.48 -> 0.6 ms). The running state lives in the partial slots.
template <typename T>
void accumulate_decode_chunk_typed(const AttentionParams& p, const TileShape& t, int64_t seq, int64_t chunk,
                                   float* shared, const ForwardTiles& w) {
  const SequenceSpan& s = p.seqs[size_t(seq)];
  const int64_t first = p.group_item_first[size_t(seq)];
  const WorkItem& item = p.group_items[size_t(first)];  // decode: one item per kv head, alike but for the head
  const int64_t n = item.end - item.begin, rows = p.group * n;
  const KeyRange keys = split_range(p, s, item, chunk);
  const auto state = [&](int64_t h) {
    float* part = partial_slot(p, t, shared, first + h, chunk);
    return DecodeState{part, part + t.rows_pad, part + 2 * t.rows_pad, p.Dv};
  };
  for (int64_t h = 0; h < p.Hkv; ++h) {
    const DecodeState st = state(h);
    std::fill_n(st.m, rows, kNegInf);
    std::fill_n(st.l, rows, 0.0f);
    std::fill_n(st.o, rows * p.Dv, 0.0f);
    pack_decode_queries(p, t, s, h, item.begin, n, rows, w.q_heads + h * rows * t.d_vec);
  }
  uint32_t streamed = 0;
  for (int64_t j0 = keys.lo; j0 < keys.hi; j0 += kTileK) {
    const int64_t nk = std::min(kTileK, keys.hi - j0);
    streamed ^= stream_tile<T>(p, s, j0, nk);
    for (int64_t h = 0; h < p.Hkv; ++h)
      decode_tile<T>(p, t, s, h, item.begin, n, j0, nk, keys.hi, w.q_heads + h * rows * t.d_vec, state(h), w);
  }
  std::memcpy(w.row, &streamed, sizeof(streamed));  // keeps the streaming loads
}

void accumulate_decode_chunk(const AttentionParams& p, const TileShape& t, int64_t seq, int64_t chunk, float* shared,
                             const ForwardTiles& w) {
  with_float_type(p.k.dtype, [&](auto type) {  // k and v share q's dtype (validate.cpp)
    accumulate_decode_chunk_typed<typename decltype(type)::type>(p, t, seq, chunk, shared, w);
  });
}

// out = o / l and lse (finish_row) for every row of an item. Oᵀ (the tiled layout) comes
// back to rows 16 at a time through o_rows (16 x dv_vec).
void finalize(const AttentionParams& p, const TileShape& t, const SequenceSpan& s, int64_t hkv, int64_t i0,
              int64_t n, const float* m_run, const float* l_run, const float* o, OutputLayout layout,
              float* o_rows) {
  const FloatTag d;
  const bool stream = stream_output(p);
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
      const float* src = m_run[r] == kNegInf ? nullptr : block + (r - r0) * block_stride;
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
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t h = hkv * p.group + r / n, i = i0 + r % n;
    store_row_stats(p, s, h, i, stats[r], *lse_ptr(p, s, h, i));
  }
}

// probs = exp(s - lse) over every key column, recomputed from the final lse.
void write_probs(const AttentionParams& p, const TileShape& t, const SequenceSpan& s, int64_t hkv, int64_t i0,
                 int64_t n, const ForwardTiles& w) {
  const int64_t rows = p.group * n;
  pack_rescore_queries(p, t, s, hkv, i0, n, w);
  for (int64_t j0 = 0; j0 < p.Lk; j0 += kTileK) {
    const int64_t nk = std::min(kTileK, p.Lk - j0);
    const int64_t nk_valid = std::clamp<int64_t>(s.k_len - j0, 0, nk);  // keys past k_len read nothing
    rescore(p, t, s, hkv, i0, n, j0, nk_valid, w);
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

// Runs keys [ja, jb) of an item; leaves m, l in w and the output where layout says.
OutputLayout accumulate(const AttentionParams& p, const TileShape& t, const WorkItem& item, KeyRange keys,
                        const ForwardTiles& w) {
  const SequenceSpan& s = p.seqs[size_t(item.seq)];
  const int64_t n = item.end - item.begin;
  std::fill_n(w.m, t.rows_pad, kNegInf);
  std::fill_n(w.l, t.rows_pad, 0.0f);
  if (p.decode) {
    accumulate_decode(p, t, s, item.head, item.begin, n, keys.lo, keys.hi, w);
    return {t.dv_vec, 1};
  }
  if (use_bf16_dot(p)) accumulate_tiled_bf16(p, t, s, item.head, item.begin, n, keys.lo, keys.hi, w);
  else accumulate_tiled(p, t, s, item.head, item.begin, n, keys.lo, keys.hi, w);
  return {1, t.rows_pad};
}

}  // namespace

int64_t ForwardSimdScratchFloats(const AttentionParams& p) {
  const TileShape t = tile_shape(p);
  ScratchCarver sizing;
  carve(p, t, sizing);
  return sizing.used;
}

int64_t ForwardSimdSharedFloats(const AttentionParams& p) {
  if (p.kv_splits == 1) return 0;
  return int64_t(p.group_items.size()) * p.kv_splits * partial_floats(p, tile_shape(p));
}

void FlashForwardSimd(const AttentionParams& p, float* scratch, int64_t scratch_per_thread) {
  const TileShape t = tile_shape(p);
  const int64_t count = int64_t(p.group_items.size()), splits = p.kv_splits;
  float* shared = scratch + int64_t(p.num_threads) * scratch_per_thread;
#pragma omp parallel num_threads(p.num_threads)
  {
    ScratchCarver thread_scratch{scratch + omp_get_thread_num() * scratch_per_thread};
    const ForwardTiles w = carve(p, t, thread_scratch);
    if (splits == 1) {
#pragma omp for schedule(dynamic, 1)
      for (int64_t it = 0; it < count; ++it) {
        const WorkItem& item = p.group_items[size_t(it)];
        const SequenceSpan& s = p.seqs[size_t(item.seq)];
        const int64_t n = item.end - item.begin;
        const OutputLayout layout = accumulate(p, t, item, split_range(p, s, item, 0), w);
        finalize(p, t, s, item.head, item.begin, n, w.m, w.l, w.o, layout, w.o_rows);
        if (p.probs) write_probs(p, t, s, item.head, item.begin, n, w);
        if (p.head_stats) write_stats(p, t, s, item.head, item.begin, n, w);
      }
    } else {  // decode with few heads (plan_forward): chunk-major over sequences
      const int64_t num_seqs = int64_t(p.seqs.size());
#pragma omp for schedule(dynamic, 1)
      for (int64_t unit = 0; unit < num_seqs * splits; ++unit)
        accumulate_decode_chunk(p, t, unit % num_seqs, unit / num_seqs, shared, w);
    }
    if (splits > 1) {
      // Merge the splits of each item in order: m = max m_c, l = Σ l_c e^(m_c - m), o likewise.
#pragma omp for schedule(dynamic, 1)
      for (int64_t it = 0; it < count; ++it) {
        const WorkItem& item = p.group_items[size_t(it)];
        const SequenceSpan& s = p.seqs[size_t(item.seq)];
        const int64_t n = item.end - item.begin, rows = p.group * n;
        std::fill_n(w.m, rows, kNegInf);
        for (int64_t c = 0; c < splits; ++c)
          for (int64_t r = 0; r < rows; ++r)
            w.m[r] = std::max(w.m[r], partial_slot(p, t, shared, it, c)[r]);
        std::fill_n(w.l, rows, 0.0f);
        std::fill_n(w.o, rows * p.Dv, 0.0f);
        for (int64_t c = 0; c < splits; ++c) {
          const float* part = partial_slot(p, t, shared, it, c);
          for (int64_t r = 0; r < rows; ++r) {
            if (part[r] == kNegInf) continue;  // this split saw no allowed key of row r
            const float weight = std::exp(part[r] - w.m[r]);
            w.l[r] += part[t.rows_pad + r] * weight;
            for (int64_t a = 0; a < p.Dv; ++a) w.o[r * p.Dv + a] += part[2 * t.rows_pad + r * p.Dv + a] * weight;
          }
        }
        finalize(p, t, s, item.head, item.begin, n, w.m, w.l, w.o, {p.Dv, 1}, w.o_rows);
        if (p.probs) write_probs(p, t, s, item.head, item.begin, n, w);
        if (p.head_stats) write_stats(p, t, s, item.head, item.begin, n, w);
      }
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
HWY_EXPORT(FlashForwardSimd);
HWY_EXPORT(ForwardSimdScratchFloats);
HWY_EXPORT(ForwardSimdSharedFloats);

void flash_forward_simd(const AttentionParams& p, float* scratch, int64_t scratch_per_thread) {
  HWY_DYNAMIC_DISPATCH(FlashForwardSimd)(p, scratch, scratch_per_thread);
}
int64_t forward_simd_scratch_floats(const AttentionParams& p) {
  return HWY_DYNAMIC_DISPATCH(ForwardSimdScratchFloats)(p);
}
int64_t forward_simd_shared_floats(const AttentionParams& p) {
  return HWY_DYNAMIC_DISPATCH(ForwardSimdSharedFloats)(p);
}
}  // namespace multihead::detail
#endif
