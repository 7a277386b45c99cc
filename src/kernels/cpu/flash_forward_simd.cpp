// SIMD forward (Highway: one copy per target, AVX-512 and AVX2 on x86). The same
// math as the portable kernel (flash_forward.cpp), shaped for the machine:
//   - a work item is (sequence, kv head, block of queries) and covers all H / Hkv query
//     heads of the group, so each K/V tile is loaded and converted once per group;
//   - Sᵀ = K Qᵀ and Oᵀ += Vᵀ Pᵀ are register-blocked micro-kernels (outer_product-inl.hpp);
//   - the online softmax runs on vectors of rows (online_softmax-inl.hpp);
//   - decode-shaped items (a few rows, many keys) run along D and Dv instead, and their
//     keys are split into p.kv_splits chunks (fixed by shape) merged by LSE
//     (decode_forward-inl.hpp);
//   - out, lse, probs and head_stats are written by forward_outputs-inl.hpp.
// This file holds the tiled path (f32 and vdpbf16ps) and the pass over the work items.
// The tiled path also serves chunked prefill over the paged KV cache (p.paged): its key
// tiles are packed out of the cache's blocks instead of read from k and v.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/flash_forward_simd.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include <hwy/cache_control.h>
#include <omp.h>

#include <cmath>
#include <cstring>

#include "kernels/cpu/bf16_dot.hpp"
#include "kernels/cpu/decode_forward-inl.hpp"
#include "kernels/cpu/forward_outputs-inl.hpp"
#include "kernels/cpu/forward_tiles-inl.hpp"
#include "kernels/cpu/online_softmax-inl.hpp"
#include "kernels/cpu/simd_tiles-inl.hpp"
#include "kernels/kernels.hpp"

HWY_BEFORE_NAMESPACE();
namespace multihead {
namespace detail {
namespace HWY_NAMESPACE {

namespace {

void tiles_bf16(const AttentionParams& p, const TileShape& t, const SequenceSpan& s, int64_t hkv, int64_t i0,
                int64_t n, int64_t ja, int64_t jb, const ForwardTiles& w);

// Keys [ja, jb) of an item on vdpbf16ps, then its extra keys: Sᵀ = K Qᵀ and Oᵀ += Vᵀ Pᵀ
// over bf16 pairs. Full K tiles are read where they lie; V is paired straight from its
// bf16 rows (exact).
void accumulate_tiled_bf16(const AttentionParams& p, const TileShape& t, const SequenceSpan& s, int64_t hkv,
                           int64_t i0, int64_t n, int64_t ja, int64_t jb, const ForwardTiles& w) {
  const int64_t d2 = (p.D + 1) / 2;
  // Qᵀ unscaled (bf16 values stay exact), an even number of dims, then paired.
  pack_item_rows_t(p.q, p.D, 1.0f, p, s, hkv, i0, n, t, w.row, w.q_t);
  std::fill(w.q_t + p.D * t.rows_pad, w.q_t + 2 * d2 * t.rows_pad, 0.0f);
  bf16_pair_rows(w.q_t, t.rows_pad, d2, t.rows_pad, w.q_pairs, t.rows_pad);
  std::fill_n(w.o, t.dv_vec * t.rows_pad, 0.0f);
  tiles_bf16(p, t, s, hkv, i0, n, ja, jb, w);
  if (s.k_extra > 0) tiles_bf16(p, t, extra_span(s), hkv, i0, n, 0, s.k_extra, w);
}

// Keys [ja, jb) of span s (a sequence, or its extra_span: every row sees those, softcap
// only) into the running m, l and Oᵀ, on vdpbf16ps; Qᵀ already paired in w.q_pairs.
void tiles_bf16(const AttentionParams& p, const TileShape& t, const SequenceSpan& s, int64_t hkv, int64_t i0,
                int64_t n, int64_t ja, int64_t jb, const ForwardTiles& w) {
  for (int64_t j0 = ja; j0 < jb; j0 += kTileK) {
    const int64_t nk = std::min(kTileK, jb - j0);
    bf16_scores_tile(p, s, hkv, j0, nk, w.q_pairs, t.rows_pad, w.k_pairs, w.s_t);
    modify_scores(p, s, hkv, i0, n, j0, nk, t, w.s_t);
    online_softmax_columns(t, w.s_t, w.m, w.l, w.corr);
    if (p.dropout_p > 0.0f) apply_dropout(p, s, hkv, i0, n, j0, nk, w.s_t, 1, t.rows_pad, w.row);
    // Tᵀ = Vᵀ Pᵀ over key pairs (a key past nk has P = 0 and a zero V row), then
    // Oᵀ = Oᵀ · corr + Tᵀ (merge_output_t)
    const int64_t nk2 = (nk + 1) / 2;
    const uint16_t* v_rows = reinterpret_cast<const uint16_t*>(w.v);
    int64_t v_stride = p.Dv;
    if (p.paged)  // the tile's V rows out of their blocks, into w.v (unused on this path)
      copy_paged_bf16_rows(p, true, s, hkv, j0, nk, reinterpret_cast<uint16_t*>(w.v), p.Dv);
    else
      v_rows = reinterpret_cast<const uint16_t*>(kv_row<bf16>(p.v, s, hkv, j0)), v_stride = p.v.stride_l;
    bf16_pair_source_rows(v_rows, v_stride, nk, p.Dv, nk2, w.v_pairs, t.dv_vec);
    if (p.keys_maskable)
      for (int64_t c = 0; c < nk; ++c)
        if (key_unattended(w.s_t, c, t)) bf16_clear_pair_half(w.v_pairs, t.dv_vec, c, p.Dv);
    // NaN and inf in V only reach the rows that weigh them (nonfinite_values-inl.hpp): each
    // goes to 0 in its pair and P · v into the rows whose P is not 0.
    const int64_t rows = p.group * n;
    const auto v_row = [&](int64_t c) { return reinterpret_cast<const bf16*>(v_rows + c * v_stride); };
    const bool guard = tile_needs_value_guard<bf16>(w.s_t, rows, nk, 1, t.rows_pad, p.Dv, v_row);
    if (guard) std::fill_n(w.o_tile, t.dv_vec * t.rows_pad, 0.0f);
    if (guard)
      for (int64_t c = 0; c < nk; ++c)
        for (int64_t a = 0; a < p.Dv; ++a) {
          const float x = bf16_to_float(v_row(c)[a]);
          if (std::isfinite(x)) continue;
          for (int64_t r = 0; r < rows; ++r)
            if (w.s_t[c * t.rows_pad + r] != 0.0f) w.o_tile[a * t.rows_pad + r] += w.s_t[c * t.rows_pad + r] * x;
          w.v_pairs[c / 2 * t.dv_vec + a] &= c % 2 == 0 ? 0xffff0000u : 0x0000ffffu;  // this key's half
        }
    bf16_pair_rows(w.s_t, t.rows_pad, nk2, t.rows_pad, w.p_pairs, t.rows_pad);
    bf16_outer_product(w.p_pairs, t.rows_pad, w.v_pairs, 1, t.dv_vec, nk2, p.Dv, t.rows_pad, w.o_tile, guard);
    merge_output_t(t, w.corr, w.o_tile, w.o);
  }
}

void tiles_f32(const AttentionParams& p, const TileShape& t, const SequenceSpan& s, int64_t hkv, int64_t i0,
               int64_t n, int64_t ja, int64_t jb, const ForwardTiles& w);

// Keys [ja, jb) of an item, then its extra keys, tiled path: rows along vectors, Oᵀ in
// w.o. Full f32 tiles are read where they lie (V only when no key can be masked for every
// row: see zero_unattended_rows); others are packed.
void accumulate_tiled(const AttentionParams& p, const TileShape& t, const SequenceSpan& s, int64_t hkv, int64_t i0,
                      int64_t n, int64_t ja, int64_t jb, const ForwardTiles& w) {
  pack_queries_t(p, s, hkv, i0, n, t, w.row, w.q_t);
  std::fill_n(w.o, t.dv_vec * t.rows_pad, 0.0f);
  tiles_f32(p, t, s, hkv, i0, n, ja, jb, w);
  // The extra keys after the input keys, through the same online softmax:
  //   m, l, Oᵀ over j in [ja, jb) ∪ [k_extra_begin, k_extra_begin + k_extra)
  if (s.k_extra > 0) tiles_f32(p, t, extra_span(s), hkv, i0, n, 0, s.k_extra, w);
}

// Keys [ja, jb) of span s (a sequence, or its extra_span) into the running m, l and Oᵀ;
// Qᵀ already packed in w.q_t.
void tiles_f32(const AttentionParams& p, const TileShape& t, const SequenceSpan& s, int64_t hkv, int64_t i0,
               int64_t n, int64_t ja, int64_t jb, const ForwardTiles& w) {
  for (int64_t j0 = ja; j0 < jb; j0 += kTileK) {
    const int64_t nk = std::min(kTileK, jb - j0);
    const bool k_in_place = p.kv_tiles_in_place && nk == kTileK, v_in_place = k_in_place && !p.keys_maskable;
    if (p.paged) {
      pack_paged_rows(p, false, s, hkv, j0, nk, p.D, w.k);
      pack_paged_rows(p, true, s, hkv, j0, nk, t.dv_vec, w.v);
    } else {
      if (!k_in_place) pack_rows(p.k, s, hkv, j0, nk, p.D, p.D, w.k);
      if (!v_in_place) pack_rows(p.v, s, hkv, j0, nk, p.Dv, t.dv_vec, w.v);
    }
    const float* k_rows = k_in_place ? kv_row<float>(p.k, s, hkv, j0) : w.k;
    const float* v_rows = v_in_place ? kv_row<float>(p.v, s, hkv, j0) : w.v;
    const int64_t k_stride = k_in_place ? p.k.stride_l : p.D;
    int64_t v_stride = v_in_place ? p.v.stride_l : t.dv_vec;
    scores_t(w.q_t, k_rows, k_stride, p.D, t, w.s_t);
    modify_scores(p, s, hkv, i0, n, j0, nk, t, w.s_t);
    online_softmax_columns(t, w.s_t, w.m, w.l, w.corr);
    // dropout acts on P·V only: l keeps every weight
    if (p.dropout_p > 0.0f) apply_dropout(p, s, hkv, i0, n, j0, nk, w.s_t, 1, t.rows_pad, w.row);
    if (p.keys_maskable) zero_unattended_rows(w.s_t, nk, t, w.v, t.dv_vec);
    // NaN and inf in V only reach the rows that weigh them (nonfinite_values-inl.hpp)
    const int64_t rows = p.group * n;
    const bool guard = tile_needs_value_guard<float>(w.s_t, rows, nk, 1, t.rows_pad, p.Dv,
                                                     [&](int64_t c) { return v_rows + c * v_stride; });
    if (guard) {
      if (v_in_place) pack_rows(p.v, s, hkv, j0, nk, p.Dv, t.dv_vec, w.v);
      v_rows = w.v, v_stride = t.dv_vec;
      std::fill_n(w.o_tile, t.dv_vec * t.rows_pad, 0.0f);
      move_nonfinite_values(w.s_t, rows, nk, 1, t.rows_pad, w.v, t.dv_vec, p.Dv, w.o_tile, 1, t.rows_pad);
    }
    // Tᵀ = Vᵀ Pᵀ, then Oᵀ = Oᵀ · corr + Tᵀ (merge_output_t: blocked sums)
    outer_product(w.s_t, t.rows_pad, v_rows, 1, v_stride, nk, p.Dv, t.rows_pad, w.o_tile, guard);
    merge_output_t(t, w.corr, w.o_tile, w.o);
  }
}

// Runs keys [ja, jb) of an item; leaves m, l in w and the output where layout says.
OutputLayout accumulate(const AttentionParams& p, const TileShape& t, const WorkItem& item, IndexRange keys,
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

int64_t SimdFloatLanes() { return row_vector(); }

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
    if (splits > 1) {  // (implicit barrier: every split is done) merge each item's, then write it
#pragma omp for schedule(dynamic, 1)
      for (int64_t it = 0; it < count; ++it) {
        const WorkItem& item = p.group_items[size_t(it)];
        const SequenceSpan& s = p.seqs[size_t(item.seq)];
        const int64_t n = item.end - item.begin;
        merge_splits(p, t, shared, it, p.group * n, w);
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
HWY_EXPORT(SimdFloatLanes);

int64_t simd_float_lanes() { return HWY_DYNAMIC_DISPATCH(SimdFloatLanes)(); }

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
