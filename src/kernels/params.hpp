// The plan-to-kernel contract, owned by the kernel layer: plain structs that the planner
// (src/attention/plan.cpp) fills after validation and the kernels read. Kernels trust
// every field; they never validate and never allocate, and they do not re-derive what
// the planner decided (the named flags below).
//
// AttentionParams is the sum of the parts a kernel reads:
//   KernelOperands  sizes, q/k/v, the sequences
//   ScoreModifiers  everything between q·k and the softmax (scale, softcap, window,
//                   mask, bias, ALiBi) plus the softmax's sinks and dropout
//   ForwardTargets  out, lse, probs, head_stats
//   WorkPlan        tiles, work items, decode/split decisions, kernel flags, threads
#pragma once

#include <cstdint>
#include <vector>

#include "multihead/kv_cache.hpp"
#include "multihead/tensor.hpp"

namespace multihead::detail {

// ---- Tile and decode constants (each defined here only) ----

// Query rows per portable work item (and per SIMD group item, all heads together).
inline constexpr int64_t kTileQ = 64;
// Keys per tile, portable and SIMD (a multiple of every target's 2 vectors): a 64 x 64
// score tile with its Q/K/V rows stays in L2 for D <= 256.
inline constexpr int64_t kTileK = 64;

// Query rows per SIMD forward group item where D and Dv are at most kWideTileMaxDim and
// no causal or window band cuts the items: Qᵀ and Oᵀ still fit L1 beside a K/V tile, and
// each K/V tile serves twice the rows (S1 +3 points of peak, the L = 32768 case +10). At
// D = 128 (S2) it was 3% slower; on a band the diagonal tiles waste twice the work (S4
// forward slower); the backward keeps kTileQ, its tiles hold more (6.6% slower at 128).
// Rows are computed alike in any item, so the bits do not depend on this.
inline constexpr int64_t kWideTileQ = 128;
inline constexpr int64_t kWideTileMaxDim = 64;

// Calls whose sequences have at most this many queries (decoding) run the SIMD kernels'
// decode path and may have their keys split (WorkPlan::kv_splits). Chosen by the
// query length alone, so GQA and MHA with repeated K/V take the same path.
inline constexpr int64_t kDecodeQueries = 4;

// Decode splits: decode calls with fewer than kSplitBelowHeads (sequence, query head)
// pairs get up to kMaxSplits key chunks of at least kSplitKeys each. Besides feeding every
// core when heads are few, chunks let the threads read neighbouring heads of the same keys
// at once (the kernel runs them chunk-major): S3 (32 heads) went 1.8 -> 1.3 ms cold.
inline constexpr int64_t kSplitBelowHeads = 64;
inline constexpr int64_t kSplitKeys = 512;
inline constexpr int64_t kMaxSplits = 16;

// An f32 output of at least this many bytes is streamed past the caches (non-temporal
// stores, no read-for-ownership): it would not stay there anyway, and on S1 (12 MiB)
// waiting for its lines took 4% of the time.
inline constexpr int64_t kStreamOutputBytes = int64_t(8) << 20;

// ---- Operand descriptions ----

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
  int64_t k_len = 0;      // Lk_b: input keys after key padding (extra keys not counted)
  int64_t kv_offset = 0;  // diagonal: query i is aligned with key i + kv_offset
  // Extra keys (AttentionOptions::extra_keys): rows [k_extra_begin, k_extra_begin + k_extra)
  // (sequence-local) that every query sees. Kernels run them as extra_span(*this).
  int64_t k_extra_begin = 0;
  int64_t k_extra = 0;
  // Set only on the view extra_span returns: every query sees every key [0, k_len), and
  // only the score transforms (scale, softcap) apply: no window, mask, bias or ALiBi.
  bool unmasked = false;
};

// The extra keys of a sequence as a sequence of their own: keys [0, k_extra) are rows
// k_extra_begin.. of the sequence, so loads, dropout hashes and dk/dv stores (which all
// address k rows as k_begin + j) reach the right rows. Queries are unchanged.
inline SequenceSpan extra_span(const SequenceSpan& s) {
  SequenceSpan e = s;
  e.k_begin = s.k_begin + s.k_extra_begin;
  e.k_len = s.k_extra;
  e.kv_offset = 0;
  e.k_extra_begin = 0;
  e.k_extra = 0;
  e.unmasked = true;
  return e;
}

// A block of rows of one sequence and one head: the unit of parallel work. For the
// forward and dq passes `head` is a query head and [begin, end) query rows; for the
// dk/dv pass `head` is a key/value head and [begin, end) key rows. SIMD group items:
// `head` is a kv head and the rows cover all its query heads.
struct WorkItem {
  int32_t seq = 0;
  int32_t head = 0;
  int64_t begin = 0, end = 0;
};

// ---- The parts of AttentionParams ----

struct KernelOperands {
  // Sizes in docs/CONTRACT.md letters. Lq/Lk are the tensors' dims (total rows when varlen).
  int64_t B = 0, Lq = 0, Lk = 0, H = 0, Hkv = 0, D = 0, Dv = 0;
  int64_t group = 1;  // H / Hkv: query heads per key/value head
  int64_t extra_keys = 0;  // AttentionOptions::extra_keys: mask/bias/dbias cover Lk - extra_keys keys
  Activation q, k, v;  // inputs, one float dtype
  std::vector<SequenceSpan> seqs;
  // Attention over a paged KV cache (src/attention/plan_cached.cpp): K and V rows lie in
  // the cache's blocks, found through sequence b's block table (seqs[b].batch = b), and
  // k and v are unused. Row j of kv head g: block paged_tables[b][j / block_size], row
  // g · block_size + j % block_size of its K (V) block.
  bool paged = false;
  KvCacheLayout paged_cache;
  std::vector<const int32_t*> paged_tables;
};

struct ScoreModifiers {
  float scale = 1.0f;
  float softcap = 0.0f;  // 0 = off
  // Structural masking: causal folds into window_right (<= 0); -1 = unbounded.
  int64_t window_left = -1, window_right = -1;
  Broadcast4 mask;                      // bool keep-mask
  Broadcast4 bias;                      // additive float bias
  float bias_masked_at = 0.0f;          // bias <= this (the dtype's lowest) is masked
  const float* alibi_slopes = nullptr;  // (H), element stride alibi_stride
  int64_t alibi_stride = 0;
  // The softmax's extras: a per-head sink logit in the denominator, dropout on P·V.
  const float* sinks = nullptr;  // (H), element stride sinks_stride
  int64_t sinks_stride = 0;
  float dropout_p = 0.0f;  // 0 = off
  uint64_t dropout_seed = 0;

  // Planner flags.
  // No softcap, bias, ALiBi or mask: a score is scale · q·k, and a tile that no window
  // or causal band cuts needs nothing more (SIMD tiles skip the modifier unit).
  bool scores_plain = true;
  // A mask or bias is present: a key inside a tile may be masked for every row, so its
  // K/V row must be zeroed before a product (0 · garbage, NaN or inf, would leak).
  bool keys_maskable = false;
};

struct ForwardTargets {
  Activation out;  // (B, Lq, H, Dv)
  float* lse = nullptr;  // (B, H, Lq)
  int64_t lse_stride_b = 0, lse_stride_h = 0, lse_stride_i = 0;
  float* probs = nullptr;  // (B, H, Lq, Lk), optional
  int64_t probs_stride_b = 0, probs_stride_h = 0, probs_stride_i = 0, probs_stride_j = 0;
  float* head_stats = nullptr;  // (B, H, Lq, 3), optional: entropy, max P, argmax
  int64_t stats_stride_b = 0, stats_stride_h = 0, stats_stride_i = 0, stats_stride_k = 0;

  // Planner flag (SIMD forward): out is f32, whole vectors of the active ISA, 64-byte
  // aligned and at least kStreamOutputBytes: written with non-temporal stores.
  bool stream_output = false;
};

struct WorkPlan {
  int64_t tile_q = kTileQ, tile_k = kTileK;
  std::vector<WorkItem> q_items;  // (seq, query head, query rows)
  // SIMD kernels: (seq, kv head, query rows), covering the group's query heads at once.
  int64_t group_rows = 1;  // queries per group item (group · group_rows rows)
  std::vector<WorkItem> group_items;
  std::vector<int64_t> group_item_first;  // per sequence: index of its first group item
  bool decode = false;    // every sequence has <= kDecodeQueries queries
  int64_t kv_splits = 1;  // decode: each group item's keys run in this many chunks, merged by LSE
  int num_threads = 1;

  // Planner flags for the SIMD kernels (the runtime ISA asked of the dispatch).
  // bf16 inputs on an AVX-512 target with AVX512-BF16: products on vdpbf16ps.
  bool bf16_dot = false;
  // f32 K and V: a full key tile is read where it lies instead of packed.
  bool kv_tiles_in_place = false;
  // The backward's dQ = dS K may read full f32 K tiles in place: rows are whole pairs of
  // the active ISA's vectors (D a multiple of 2 vectors) and no key can be masked.
  bool dq_keys_in_place = false;
};

struct AttentionParams : KernelOperands, ScoreModifiers, ForwardTargets, WorkPlan {};

// Extra fields of the backward.
struct BackwardParams {
  Activation dout;        // (B, Lq, H, Dv)
  Activation dq, dk, dv;  // shapes of q, k, v
  // dbias: the bias's own shape, right-aligned to (B, H, Lq, Lk); reduced over broadcast dims.
  float* dbias = nullptr;
  int64_t dbias_stride_b = 0, dbias_stride_h = 0, dbias_stride_i = 0, dbias_stride_j = 0;
  bool dbias_reduce_b = false, dbias_reduce_h = false, dbias_reduce_i = false, dbias_reduce_j = false;
  float* dsinks = nullptr;  // (H)
  int64_t dsinks_stride = 0;
  std::vector<WorkItem> kv_items;  // (seq, kv head, key rows)
  // kv_items of (seq, kv head) u = seq·Hkv + hkv are [kv_item_first[u], kv_item_first[u + 1]).
  std::vector<int64_t> kv_item_first;
  // dbias pass, one item per block of the dbias tensor, each owning its block; a reduced
  // dim has a single target index 0 and the item sums over it in a fixed order.
  //   portable: (target batch, target head, query rows in kTileQ blocks)
  //   SIMD:     (target batch, target kv head: its group's heads, query rows of one
  //             group item); the rows are [0, Lq) when dbias_reduce_i
  // The planner fills the one the dispatched family reads.
  std::vector<WorkItem> bias_items;
  // Run on the portable kernels although the ISA has SIMD ones: the inputs hold non-finite
  // values, which only the portable kernels keep out of the rows and keys that cannot see
  // them (they skip every zero P and dS; the SIMD tile products compute 0 · x).
  bool portable = false;
};

}  // namespace multihead::detail
