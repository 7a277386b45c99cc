// The plan-to-kernel contract of attention over the paged KV cache (planned by
// src/attention/plan_cached.cpp, read by kernels/cpu/paged_forward*.cpp): the forward's
// AttentionParams with k and v replaced by the cache's blocks (paged, paged_cache,
// paged_tables). Decode calls run the paged kernels; chunked prefill (more than
// kDecodeQueries queries) runs the SIMD forward's tiled path, which packs its key tiles
// from the blocks (the scalar ISA runs the portable paged kernel for both).
//
// Fields of AttentionParams the paged kernels read: sizes (Lk is the longest sequence),
// group, q, seqs (batch = b, q_len = Lq, k_len = the sequence's cached length, kv_offset =
// k_len - Lq), scale, softcap, window_left/right (causal folded in), alibi, sinks, out,
// lse, group_items / group_rows / group_item_first, kv_splits, num_threads. k, v, masks,
// bias, dropout, probs and head_stats are unused (the validator rejects them).
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/params.hpp"
#include "multihead/kv_cache.hpp"

namespace multihead::detail {

struct PagedParams : AttentionParams {
  // (AttentionParams::paged_cache and paged_tables say where the blocks lie.)
  int64_t rows_max = 0;                 // group · group_rows: rows of the largest item
  // Keys per tile: min(block_size, kTileK). Tiles start at multiples of it, so a tile
  // never crosses a block (block sizes are powers of two).
  int64_t keys_per_tile = 1;
};

}  // namespace multihead::detail
