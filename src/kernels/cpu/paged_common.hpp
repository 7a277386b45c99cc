// The portable paged-cache kernel's scaffolding (paged_forward.cpp): scratch, the key
// chunks of an item, where a tile of keys lies in the pool, the pass over the work items
// with split merging, and writing out and lse.
//
// A work item is (sequence, kv head, query rows) and covers the group's H / Hkv query
// heads: row r is head hkv·group + r / n, query i0 + r % n, so each K/V tile is read once
// for the whole group. Its state is row-major: m, l per row, O (rows x Dv).
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kernels/cpu/split_merge.hpp"
#include "kernels/cpu/tile_ops.hpp"
#include "kernels/paged_params.hpp"

namespace multihead::detail {

// One thread's scratch (floats, each block 64-byte aligned).
struct PagedScratch {
  float* q;    // rows_max x D       the item's queries, f32
  float* s;    // rows_max x kTileK  scores, then probabilities (row-major)
  float* m;    // rows_pad           running max
  float* l;    // rows_pad           running sum
  float* o;    // rows_max x Dv      running P·V
  float* row;  // max(D, Dv, kTileK) conversion buffer
};

inline int64_t paged_rows_pad(const PagedParams& p) { return round_up(p.rows_max, 16); }

// Carves w from base (null: only counts); returns the floats used.
inline int64_t carve_paged(const PagedParams& p, float* base, PagedScratch* w) {
  int64_t used = 0;
  const auto take = [&](int64_t floats) {
    float* block = base ? base + used : nullptr;
    used += round_up(floats, 16);
    return block;
  };
  const int64_t rows_pad = paged_rows_pad(p);
  w->q = take(p.rows_max * p.D);
  w->s = take(p.rows_max * kTileK);
  w->m = take(rows_pad);
  w->l = take(rows_pad);
  w->o = take(p.rows_max * p.Dv);
  w->row = take(std::max({p.D, p.Dv, kTileK}));
  return used;
}

// A split's partial state in the shared scratch (split_merge.hpp's slot layout).
inline int64_t paged_partial_floats(const PagedParams& p) {
  return round_up(2 * paged_rows_pad(p) + p.rows_max * p.Dv, 16);
}
inline int64_t paged_shared_floats(const PagedParams& p) {
  return p.kv_splits == 1 ? 0 : int64_t(p.group_items.size()) * p.kv_splits * paged_partial_floats(p);
}

// The keys of chunk `chunk` of an item: [lo, hi) of its rows' ranges, lo rounded down to a
// tile, cut into kv_splits chunks of whole tiles; fixed by shape, never by thread count.
inline IndexRange paged_chunk(const PagedParams& p, const WorkItem& item, int64_t chunk) {
  const SequenceSpan& s = p.seqs[size_t(item.seq)];
  const int64_t T = p.keys_per_tile;
  const int64_t lo = key_range(p, s, item.begin).lo / T * T, hi = key_range(p, s, item.end - 1).hi;
  if (hi <= lo) return {lo, lo};
  const int64_t len = round_up((hi - lo + p.kv_splits - 1) / p.kv_splits, T);
  const int64_t a = std::min(hi, lo + chunk * len);
  return {a, std::min(hi, a + len)};
}

// Keys [j, j + nk) of kv head hkv (one tile: inside one block): nk rows of D (Dv)
// elements, contiguous; int8 scales one per key.
struct PagedTile {
  const std::byte* k;
  const std::byte* v;
  const float* k_scales;  // int8 only, else null
  const float* v_scales;
};
inline PagedTile paged_tile(const PagedParams& p, int64_t seq, int64_t hkv, int64_t j) {
  const KvCacheLayout& c = p.paged_cache;
  const int64_t block = p.paged_tables[size_t(seq)][j / c.block_size], slot = j % c.block_size;
  const int64_t row = hkv * c.block_size + slot;
  const auto esize = int64_t(element_size(c.dtype));
  PagedTile t;
  t.k = c.k_blocks + block * c.k_block_bytes + row * c.head_dim * esize;
  t.v = c.v_blocks + block * c.v_block_bytes + row * c.v_head_dim * esize;
  t.k_scales = c.k_scales ? c.k_scales + block * c.scales_block_stride + row : nullptr;
  t.v_scales = c.v_scales ? c.v_scales + block * c.scales_block_stride + row : nullptr;
  return t;
}

// The item's queries as f32 rows (rows x D).
inline void pack_paged_queries(const PagedParams& p, const WorkItem& item, float* q) {
  const SequenceSpan& s = p.seqs[size_t(item.seq)];
  const int64_t n = item.end - item.begin;
  for (int64_t r = 0; r < p.group * n; ++r) {
    const int64_t h = item.head * p.group + r / n, i = item.begin + r % n;
    load_row(p.q.data, p.q.dtype, s.batch * p.q.stride_b + i * p.q.stride_l + h * p.q.stride_h, p.D, q + r * p.D);
  }
}

// out_i = O_i / l_i (0 for a row with no allowed key) and lse_i, sinks included (finish_row).
inline void finish_paged_item(const PagedParams& p, const WorkItem& item, const float* m, const float* l,
                              const float* o) {
  const SequenceSpan& s = p.seqs[size_t(item.seq)];
  const int64_t n = item.end - item.begin;
  for (int64_t r = 0; r < p.group * n; ++r) {
    const int64_t h = item.head * p.group + r / n, i = item.begin + r % n;
    const RowResult result = finish_row(m[r], l[r], sink_logit(p, h));
    if (p.lse) *lse_ptr(p, s, h, i) = result.lse;
    const int64_t offset = s.batch * p.out.stride_b + i * p.out.stride_l + h * p.out.stride_h;
    if (row_is_empty(m[r], l[r])) {  // +0 is all zero bits in f32, bf16 and f16
      const size_t size = dtype_size(p.out.dtype);
      std::memset(static_cast<char*>(p.out.data) + offset * int64_t(size), 0, size_t(p.Dv) * size);
    } else {
      store_row(p.out.data, p.out.dtype, offset, p.Dv, o + r * p.Dv, result.out_factor);
    }
  }
}

// The pass: accumulate(item, keys, m, l, o, w) runs keys [keys.lo, keys.hi) of an item from
// a fresh state (m = -inf, l = 0, O = 0 set by the caller here). Without splits each item is
// accumulated and written by one thread; with splits every (item, chunk) unit fills its
// slot in the shared scratch, then each item's slots are merged in chunk order. Every
// output element has one owner and a fixed order of operations: the bits do not depend on
// the thread count.
template <class Accumulate>
void run_paged(const PagedParams& p, float* scratch, int64_t per_thread, Accumulate&& accumulate) {
  const int64_t count = int64_t(p.group_items.size()), splits = p.kv_splits;
  const int64_t rows_pad = paged_rows_pad(p), slot_floats = paged_partial_floats(p);
  float* shared = scratch + int64_t(p.num_threads) * per_thread;
  const auto slot = [&](int64_t it, int64_t c) { return shared + (it * splits + c) * slot_floats; };
#pragma omp parallel num_threads(p.num_threads)
  {
    PagedScratch w;
    carve_paged(p, scratch + omp_get_thread_num() * per_thread, &w);
    const auto fresh = [&](const WorkItem& item, float* m, float* l, float* o) {
      const int64_t rows = p.group * (item.end - item.begin);
      std::fill_n(m, rows, kNegInf);
      std::fill_n(l, rows, 0.0f);
      std::fill_n(o, rows * p.Dv, 0.0f);
    };
    if (splits == 1) {
#pragma omp for schedule(dynamic, 1)
      for (int64_t it = 0; it < count; ++it) {
        const WorkItem& item = p.group_items[size_t(it)];
        fresh(item, w.m, w.l, w.o);
        accumulate(item, paged_chunk(p, item, 0), w.m, w.l, w.o, w);
        finish_paged_item(p, item, w.m, w.l, w.o);
      }
    } else {
#pragma omp for schedule(dynamic, 1)
      for (int64_t unit = 0; unit < count * splits; ++unit) {
        const int64_t it = unit % count, c = unit / count;
        const WorkItem& item = p.group_items[size_t(it)];
        float* part = slot(it, c);
        fresh(item, part, part + rows_pad, part + 2 * rows_pad);
        accumulate(item, paged_chunk(p, item, c), part, part + rows_pad, part + 2 * rows_pad, w);
      }
      // (implicit barrier: every chunk is done)
#pragma omp for schedule(dynamic, 1)
      for (int64_t it = 0; it < count; ++it) {
        const WorkItem& item = p.group_items[size_t(it)];
        merge_partials(splits, p.group * (item.end - item.begin), rows_pad, p.Dv,
                       [&](int64_t c) -> const float* { return slot(it, c); }, w.m, w.l, w.o);
        finish_paged_item(p, item, w.m, w.l, w.o);
      }
    }
  }
}

}  // namespace multihead::detail
