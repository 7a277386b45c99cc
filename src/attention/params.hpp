// The plan-to-kernel ABI: one plain struct, filled by plan.cpp after validation.
// Kernels trust every field; they never validate and never allocate.
#pragma once

#include <cstdint>
#include <vector>

#include "multihead/tensor.hpp"

namespace multihead::detail {

// A read-only strided 4-D operand broadcast to (B, H, Lq, Lk): stride 0 on broadcast dims.
struct Broadcast4 {
  const void* data = nullptr;  // null: operand absent
  DType dtype = DType::kF32;
  int64_t stride_b = 0, stride_h = 0, stride_i = 0, stride_j = 0;
};

// A rank-4 activation tensor (B, L, heads, dim) with element strides; dim is contiguous.
struct Activation {
  void* data = nullptr;
  DType dtype = DType::kF32;
  int64_t stride_b = 0, stride_l = 0, stride_h = 0;
};

// One sequence of the batch: a batch entry, or one packed sequence of a varlen batch.
struct SequenceSpan {
  int64_t batch = 0;      // index into the B dim of q, k, v, out, lse, masks
  int64_t q_begin = 0;    // first row of this sequence along Lq (0 unless varlen)
  int64_t q_len = 0;      // Lq_b
  int64_t k_begin = 0;    // first row along Lk (0 unless varlen)
  int64_t k_len = 0;      // Lk_b after key padding
  int64_t kv_offset = 0;  // diagonal: query i is aligned with key i + kv_offset
};

// Query rows per portable work item (and per SIMD group item, all heads together).
inline constexpr int64_t kTileQ = 64;

// Query rows per SIMD forward group item where D and Dv are at most kWideTileMaxDim and
// no causal or window band cuts the items: Qᵀ and Oᵀ still fit L1 beside a K/V tile, and
// each K/V tile serves twice the rows (S1 +3 points of peak, the L = 32768 case +10). At
// D = 128 (S2) it was 3% slower; on a band the diagonal tiles waste twice the work (S4
// forward slower); the backward keeps kTileQ, its tiles hold more (6.6% slower at 128).
// Rows are computed alike in any item, so the bits do not depend on this.
inline constexpr int64_t kWideTileQ = 128;
inline constexpr int64_t kWideTileMaxDim = 64;

// Calls whose sequences have at most this many queries (decoding) run the SIMD kernels'
// decode path and may have their keys split (AttentionParams::kv_splits). Chosen by the
// query length alone, so GQA and MHA with repeated K/V take the same path.
inline constexpr int64_t kDecodeQueries = 4;

// A block of rows of one sequence and one head: the unit of parallel work. For the
// forward and dq passes `head` is a query head and [begin, end) query rows; for the
// dk/dv pass `head` is a key/value head and [begin, end) key rows.
struct WorkItem {
  int32_t seq = 0;
  int32_t head = 0;
  int64_t begin = 0, end = 0;
};

struct AttentionParams {
  // Sizes in DESIGN.md letters. Lq/Lk are the tensors' dims (total rows when varlen).
  int64_t B = 0, Lq = 0, Lk = 0, H = 0, Hkv = 0, D = 0, Dv = 0;
  int64_t group = 1;  // H / Hkv: query heads per key/value head

  Activation q, k, v;  // inputs, one float dtype
  float scale = 1.0f;
  float softcap = 0.0f;  // 0 = off

  // Structural masking: causal folds into window_right (<= 0); -1 = unbounded.
  int64_t window_left = -1, window_right = -1;
  Broadcast4 mask;                 // bool keep-mask
  Broadcast4 bias;                 // additive float bias
  float bias_masked_at = 0.0f;     // bias <= this (the dtype's lowest) is masked
  const float* alibi_slopes = nullptr;  // (H), element stride alibi_stride
  int64_t alibi_stride = 0;
  const float* sinks = nullptr;         // (H), element stride sinks_stride
  int64_t sinks_stride = 0;
  float dropout_p = 0.0f;               // 0 = off
  uint64_t dropout_seed = 0;

  std::vector<SequenceSpan> seqs;

  // Forward outputs.
  Activation out;                      // (B, Lq, H, Dv)
  float* lse = nullptr;                // (B, H, Lq)
  int64_t lse_stride_b = 0, lse_stride_h = 0, lse_stride_i = 0;
  float* probs = nullptr;              // (B, H, Lq, Lk), optional
  int64_t probs_stride_b = 0, probs_stride_h = 0, probs_stride_i = 0, probs_stride_j = 0;
  float* head_stats = nullptr;         // (B, H, Lq, 3), optional: entropy, max P, argmax
  int64_t stats_stride_b = 0, stats_stride_h = 0, stats_stride_i = 0, stats_stride_k = 0;

  // Tiling.
  int64_t tile_q = 64, tile_k = 64;
  std::vector<WorkItem> q_items;  // (seq, query head, query rows)
  // SIMD kernels: (seq, kv head, query rows), covering the group's query heads at once.
  int64_t group_rows = 1;             // queries per group item (group · group_rows rows)
  std::vector<WorkItem> group_items;
  std::vector<int64_t> group_item_first;  // per sequence: index of its first group item
  bool decode = false;    // every sequence has <= kDecodeQueries queries
  int64_t kv_splits = 1;  // decode: each group item's keys run in this many chunks, merged by LSE
  int num_threads = 1;
};

// Extra fields of the backward.
struct BackwardParams {
  Activation dout;                  // (B, Lq, H, Dv)
  Activation dq, dk, dv;            // shapes of q, k, v
  // dbias: the bias's own shape, right-aligned to (B, H, Lq, Lk); reduced over broadcast dims.
  float* dbias = nullptr;
  int64_t dbias_stride_b = 0, dbias_stride_h = 0, dbias_stride_i = 0, dbias_stride_j = 0;
  bool dbias_reduce_b = false, dbias_reduce_h = false, dbias_reduce_i = false, dbias_reduce_j = false;
  float* dsinks = nullptr;          // (H)
  int64_t dsinks_stride = 0;
  std::vector<WorkItem> kv_items;   // (seq, kv head, key rows)
  // kv_items of (seq, kv head) u = seq·Hkv + hkv are [kv_item_first[u], kv_item_first[u + 1]).
  std::vector<int64_t> kv_item_first;
  // dbias pass: (target batch, target head, query rows) of the dbias tensor; a reduced
  // dim has a single target index 0 and the item loops over it in a fixed order.
  std::vector<WorkItem> bias_items;
};


}  // namespace multihead::detail
