// The SIMD forward's decode path (re-included once per Highway target; included by
// flash_forward_simd.cpp only): calls whose sequences have at most kDecodeQueries queries
// score along D and weight V along Dv, reading K and V rows where they lie (in k and v, or
// in the paged cache's blocks, run by run); with few heads their keys run in p.kv_splits
// chunks (fixed by shape), merged by LSE in merge_splits.
#if defined(MULTIHEAD_DECODE_FORWARD_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MULTIHEAD_DECODE_FORWARD_INL_H_
#undef MULTIHEAD_DECODE_FORWARD_INL_H_
#else
#define MULTIHEAD_DECODE_FORWARD_INL_H_
#endif

#include <cstring>

#include <hwy/highway.h>

#include "kernels/cpu/forward_tiles-inl.hpp"
#include "kernels/cpu/online_softmax-inl.hpp"
#include "kernels/cpu/simd_tiles-inl.hpp"
#include "kernels/cpu/split_merge.hpp"

HWY_BEFORE_NAMESPACE();
namespace multihead {
namespace detail {
namespace HWY_NAMESPACE {
namespace {

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

// Keys [j0, j0 + nk) of kv head hkv: what one decode_tile call computes on.
struct KeyUnit {
  int64_t hkv = -1, j0 = 0, nk = 0;  // hkv < 0: none
};

// Key row c of unit u in a paged cache (its K and V rows) into L2.
template <typename T>
void prefetch_paged_key(const AttentionParams& p, const SequenceSpan& s, const KeyUnit& u, int64_t c) {
  if (u.hkv < 0 || c >= u.nk) return;
  for (bool values : {false, true}) {
    const char* row = reinterpret_cast<const char*>(paged_row(p, values, s, u.hkv, u.j0 + c).data);
    const int64_t bytes = (values ? p.Dv : p.D) * int64_t(sizeof(T));
    for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(row + b, 0, 2);
  }
}

// Keys [j0, j0 + nk) of an item's decode rows (keys before jb are prefetched): S = Q Kᵀ by
// dot products along D, P·V along Dv, so no lane idles on a handful of rows. q comes from
// pack_decode_queries. K and V are read in place, except V tiles with masked keys:
// those are packed with the masked rows zeroed, so garbage there (NaN, inf) cannot reach O
// through 0 · x. Paged calls prefetch the unit computed next (`next`) as they go.
template <typename T>
void decode_tile(const AttentionParams& p, const TileShape& t, const SequenceSpan& s, int64_t hkv, int64_t i0,
                 int64_t n, int64_t j0, int64_t nk, int64_t jb, const float* q, const DecodeState& st,
                 const ForwardTiles& w, const KeyUnit& next) {
  const int64_t rows = p.group * n;
  const auto paged_rows = [&](bool values, int64_t c0) {
    return reinterpret_cast<const T*>(paged_row(p, values, s, hkv, j0 + c0).data);
  };
  // S[r, c] = scale · q_r · k_c
  if (p.paged) {
    // While this unit computes, the next one's K and V rows go into L2, one key row per key
    // scored, so the misses spread over the compute: its runs lie in other blocks, whose
    // start the hardware prefetcher cannot guess. A/B on Zen 3 (2 threads, cold): D1 f32
    // 2.34 -> 1.92 ms, bf16 1.60 -> 1.33 ms against streaming each tile of all heads first
    // (stream_tile); D2 ~15 -> ~11 ms against prefetching the next tile at once.
    for_each_paged_run(p, j0, nk, [&](int64_t c0, int64_t run) {
      const auto ahead = [&](int64_t c) { prefetch_paged_key<T>(p, s, next, c0 + c); };
      decode_scores_at<T>(p, t, rows, paged_rows(false, c0), p.D, run, q, w.s_t + c0, kTileK, 1, ahead);
      if constexpr (std::is_same_v<T, int8_t>) {  // int8: k_c = scale_c · q_c, so S[r, c] = scale_c · (q_r · q_c)
        const float* scales = paged_row(p, false, s, hkv, j0 + c0).scale;
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c = 0; c < run; ++c) w.s_t[r * kTileK + c0 + c] *= scales[c];
      }
    });
  } else {
    const RowPrefetch k_ahead = prefetch_rows<T>(p.k, s, hkv, j0 + kPrefetchKeys, jb, p.D);
    const RowPrefetch v_ahead = prefetch_rows<T>(p.v, s, hkv, j0 + kPrefetchKeys, jb, p.Dv);
    decode_scores<T>(p, t, s, hkv, rows, j0, nk, q, w.s_t, kTileK, 1, [&](int64_t c) { k_ahead(c), v_ahead(c); });
  }
  const bool plain = tile_is_plain(p, s, i0, n, j0, nk);
  for (int64_t r = 0; r < rows; ++r) {
    float* srow = w.s_t + r * kTileK;
    if (!plain) apply_score_modifiers(p, s, hkv * p.group + r / n, i0 + r % n, j0, nk, kTileK, srow, 1);
    const float correction = online_softmax_row(srow, st.m[r], st.l[r]);
    if (correction != 1.0f)
      for (int64_t a = 0; a < p.Dv; ++a) st.o[r * st.o_stride + a] *= correction;
  }
  if (p.dropout_p > 0.0f) apply_dropout(p, s, hkv, i0, n, j0, nk, w.s_t, kTileK, 1, w.row);
  // O += P V. NaN and inf in V only reach the rows that weigh them (nonfinite_values-inl.hpp):
  // a tile where some row weighs such a key 0 takes the packed path.
  const bool guard = tile_needs_value_guard<T>(w.s_t, rows, nk, kTileK, 1, p.Dv, [&](int64_t c) {
    return p.paged ? paged_rows(true, c) : kv_row<T>(p.v, s, hkv, j0 + c);
  });
  if (plain && !guard && p.paged) {
    for_each_paged_run(p, j0, nk, [&](int64_t c0, int64_t run) {
      if constexpr (std::is_same_v<T, int8_t>) {  // int8: P_c · v_c = (P_c · scale_c) · q_c (P is not read again)
        const float* scales = paged_row(p, true, s, hkv, j0 + c0).scale;
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c = 0; c < run; ++c) w.s_t[r * kTileK + c0 + c] *= scales[c];
      }
      weighted_rows(w.s_t + c0, kTileK, rows, paged_rows(true, c0), p.Dv, p.Dv, run, st.o, st.o_stride);
    });
    return;
  }
  if (plain && !guard) {
    weighted_rows(w.s_t, kTileK, rows, kv_row<T>(p.v, s, hkv, j0), p.v.stride_l, p.Dv, nk, st.o, st.o_stride);
    return;
  }
  if (p.paged) pack_paged_rows(p, true, s, hkv, j0, nk, t.dv_vec, w.v);
  else pack_rows(p.v, s, hkv, j0, nk, p.Dv, t.dv_vec, w.v);
  for (int64_t c = 0; c < nk; ++c) {
    bool attended = false;
    for (int64_t r = 0; r < rows; ++r) attended |= w.s_t[r * kTileK + c] != 0.0f;
    if (!attended) std::fill_n(w.v + c * t.dv_vec, t.dv_vec, 0.0f);
  }
  if (guard) move_nonfinite_values(w.s_t, rows, nk, kTileK, 1, w.v, t.dv_vec, p.Dv, st.o, st.o_stride, 1);
  weighted_rows(w.s_t, kTileK, rows, static_cast<const float*>(w.v), t.dv_vec, p.Dv, nk, st.o, st.o_stride);
}

// Keys [ja, jb) of an item, decode path: O row-major in w.o.
template <typename T>
void accumulate_decode_typed(const AttentionParams& p, const TileShape& t, const SequenceSpan& s, int64_t hkv,
                             int64_t i0, int64_t n, int64_t ja, int64_t jb, const ForwardTiles& w) {
  pack_decode_queries(p, t, s, hkv, i0, n, p.group * n, w.q);
  std::fill_n(w.o, p.group * n * t.dv_vec, 0.0f);
  for (int64_t j0 = ja; j0 < jb; j0 += kTileK) {
    KeyUnit next;  // paged: this head's next tile
    if (p.paged && j0 + kTileK < jb) next = {hkv, j0 + kTileK, std::min(kTileK, jb - j0 - kTileK)};
    decode_tile<T>(p, t, s, hkv, i0, n, j0, std::min(kTileK, jb - j0), jb, w.q, {w.m, w.l, w.o, t.dv_vec}, w, next);
  }
  // The extra keys after the input keys (extra_span: every row sees them, softcap only):
  //   m, l, O over j in [ja, jb) ∪ [k_extra_begin, k_extra_begin + k_extra)
  const SequenceSpan es = extra_span(s);
  for (int64_t j0 = 0; j0 < s.k_extra; j0 += kTileK)
    decode_tile<T>(p, t, es, hkv, i0, n, j0, std::min(kTileK, s.k_extra - j0), s.k_extra, w.q,
                   {w.m, w.l, w.o, t.dv_vec}, w, {});
}

void accumulate_decode(const AttentionParams& p, const TileShape& t, const SequenceSpan& s, int64_t hkv,
                       int64_t i0, int64_t n, int64_t ja, int64_t jb, const ForwardTiles& w) {
  if (p.paged && p.paged_cache.dtype == KvCacheDType::kI8)
    return accumulate_decode_typed<int8_t>(p, t, s, hkv, i0, n, ja, jb, w);
  with_float_type(p.k.dtype, [&](auto type) {  // k and v share q's dtype (validate.cpp)
    accumulate_decode_typed<typename decltype(type)::type>(p, t, s, hkv, i0, n, ja, jb, w);
  });
}

// The keys of split `chunk` of an item's key range: whole tiles, fixed by shape.
IndexRange split_range(const AttentionParams& p, const SequenceSpan& s, const WorkItem& item, int64_t chunk) {
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
// in address order (the (B, L, Hkv, D) layout; paged calls prefetch instead, decode_tile).
// A loop of plain loads keeps many misses in flight; the same misses met among the dot
// products, even with software prefetch, left S3 (K/V cold) at a third of the read
// bandwidth. Returns the words' XOR, for the caller to keep.
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
// (f32 0.48 -> 0.6 ms). Paged calls instead prefetch the next (head, tile) as each one
// computes (decode_tile). The running state lives in the partial slots.
template <typename T>
void accumulate_decode_chunk_typed(const AttentionParams& p, const TileShape& t, int64_t seq, int64_t chunk,
                                   float* shared, const ForwardTiles& w) {
  const SequenceSpan& s = p.seqs[size_t(seq)];
  const int64_t first = p.group_item_first[size_t(seq)];
  const WorkItem& item = p.group_items[size_t(first)];  // decode: one item per kv head, alike but for the head
  const int64_t n = item.end - item.begin, rows = p.group * n;
  const IndexRange keys = split_range(p, s, item, chunk);
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
  if (p.paged)  // the first unit at once; decode_tile prefetches each next one as it goes
    for (int64_t c = 0; c < std::min(kTileK, keys.hi - keys.lo); ++c)
      prefetch_paged_key<T>(p, s, {0, keys.lo, keys.hi - keys.lo}, c);
  for (int64_t j0 = keys.lo; j0 < keys.hi; j0 += kTileK) {
    const int64_t nk = std::min(kTileK, keys.hi - j0);
    if (!p.paged) streamed ^= stream_tile<T>(p, s, j0, nk);
    for (int64_t h = 0; h < p.Hkv; ++h) {
      KeyUnit next;  // paged: the next head of this tile, or the first of the next tile
      if (p.paged && h + 1 < p.Hkv) next = {h + 1, j0, nk};
      else if (p.paged && j0 + kTileK < keys.hi) next = {0, j0 + kTileK, std::min(kTileK, keys.hi - j0 - kTileK)};
      decode_tile<T>(p, t, s, h, item.begin, n, j0, nk, keys.hi, w.q_heads + h * rows * t.d_vec, state(h), w, next);
    }
  }
  // The extra keys belong to the last chunk, after its input keys:
  //   m, l, O of the last split over its keys ∪ [k_extra_begin, k_extra_begin + k_extra)
  if (chunk == p.kv_splits - 1 && s.k_extra > 0) {
    const SequenceSpan es = extra_span(s);
    for (int64_t j0 = 0; j0 < s.k_extra; j0 += kTileK) {
      const int64_t nk = std::min(kTileK, s.k_extra - j0);
      if (!p.paged) streamed ^= stream_tile<T>(p, es, j0, nk);
      for (int64_t h = 0; h < p.Hkv; ++h)
        decode_tile<T>(p, t, es, h, item.begin, n, j0, nk, s.k_extra, w.q_heads + h * rows * t.d_vec, state(h), w,
                       {});
    }
  }
  std::memcpy(w.row, &streamed, sizeof(streamed));  // keeps the streaming loads
}

void accumulate_decode_chunk(const AttentionParams& p, const TileShape& t, int64_t seq, int64_t chunk, float* shared,
                             const ForwardTiles& w) {
  if (p.paged && p.paged_cache.dtype == KvCacheDType::kI8)
    return accumulate_decode_chunk_typed<int8_t>(p, t, seq, chunk, shared, w);
  with_float_type(p.k.dtype, [&](auto type) {  // k and v share q's dtype (validate.cpp)
    accumulate_decode_chunk_typed<typename decltype(type)::type>(p, t, seq, chunk, shared, w);
  });
}

// Merges the kv_splits partial states of group item `it` in split order into w's m, l and
// O (rows x Dv, row-major): merge_partials (split_merge.hpp, shared with the paged-cache
// kernels).
void merge_splits(const AttentionParams& p, const TileShape& t, float* shared, int64_t it, int64_t rows,
                  const ForwardTiles& w) {
  merge_partials(p.kv_splits, rows, t.rows_pad, p.Dv,
                 [&](int64_t c) -> const float* { return partial_slot(p, t, shared, it, c); }, w.m, w.l, w.o);
}

}  // namespace
// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace detail
}  // namespace multihead
HWY_AFTER_NAMESPACE();

#endif  // MULTIHEAD_DECODE_FORWARD_INL_H_
