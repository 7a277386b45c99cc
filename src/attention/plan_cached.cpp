// The plan of attention over the paged cache: the forward's score options as
// plan_forward lowers them, sequences aligned bottom-right to their cached lengths, work
// items of (sequence, kv head, query rows) and, for decode calls with few heads, key
// splits; all fixed by shape, never by thread count.
#include <algorithm>
#include <cmath>

#include "attention/cached.hpp"
#include "attention/plan.hpp"
#include "kernels/kernels.hpp"
#include "multihead/threads.hpp"

namespace multihead::detail {

PagedParams plan_cached(const CachedSizes& z, const TensorView& q, const KvCache& cache,
                        std::span<const int64_t> seqs, const ForwardOutputs& outputs, const AttentionOptions& o) {
  PagedParams p;
  p.B = z.B, p.Lq = z.Lq, p.H = z.H, p.Hkv = z.Hkv, p.D = z.D, p.Dv = z.Dv;
  p.group = z.H / z.Hkv;
  p.q = {q.data, q.dtype, q.strides[0], q.strides[1], q.strides[2]};
  p.out = {outputs.out.data, outputs.out.dtype, outputs.out.strides[0], outputs.out.strides[1],
           outputs.out.strides[2]};
  if (outputs.lse) {
    p.lse = static_cast<float*>(outputs.lse->data);
    p.lse_stride_b = outputs.lse->strides[0], p.lse_stride_h = outputs.lse->strides[1];
    p.lse_stride_i = outputs.lse->strides[2];
  }
  p.scale = o.scale ? *o.scale : 1.0f / std::sqrt(float(z.D));
  p.softcap = o.softcap;
  int64_t reach = z.Lq;  // Lq + the longest sequence
  for (int64_t b = 0; b < z.B; ++b) reach = std::max(reach, z.Lq + cache.length(seqs[size_t(b)]));
  p.window_left = window_bound(o.window.left, reach);
  p.window_right = window_bound(o.window.right, reach);
  if (o.causal != CausalAlign::kNone) p.window_right = 0;  // j <= i + kv_offset
  if (o.alibi_slopes)
    p.alibi_slopes = static_cast<const float*>(o.alibi_slopes->data), p.alibi_stride = o.alibi_slopes->strides[0];
  if (o.sinks) p.sinks = static_cast<const float*>(o.sinks->data), p.sinks_stride = o.sinks->strides[0];
  p.scores_plain = p.softcap <= 0.0f && !p.alibi_slopes;

  p.paged_cache = cache.layout();
  p.keys_per_tile = std::min(p.paged_cache.block_size, kTileK);
  int64_t max_k = 0;
  for (int64_t b = 0; b < z.B; ++b) {
    SequenceSpan span;
    span.batch = b;
    span.q_len = z.Lq;
    span.k_len = cache.length(seqs[size_t(b)]);
    span.kv_offset = span.k_len - z.Lq;  // bottom-right: the last query is the last token
    p.seqs.push_back(span);
    p.paged_tables.push_back(cache.block_table(seqs[size_t(b)]).data());
    max_k = std::max(max_k, span.k_len);
  }
  p.Lk = max_k;

  // Items: every head of a group over a block of queries; decode calls take all their
  // queries in one item per (sequence, kv head).
  p.decode = z.Lq <= kDecodeQueries;
  p.group_rows = p.decode ? std::max<int64_t>(z.Lq, 1) : std::max<int64_t>(1, kTileQ / p.group);
  p.rows_max = p.group * p.group_rows;
  for (int64_t b = 0; b < z.B; ++b) {
    p.group_item_first.push_back(int64_t(p.group_items.size()));
    for (int64_t h = 0; h < z.Hkv; ++h)
      for (int64_t i0 = 0; i0 < z.Lq; i0 += p.group_rows)
        p.group_items.push_back({int32_t(b), int32_t(h), i0, std::min(i0 + p.group_rows, z.Lq)});
  }
  // Decode calls with few (sequence, head) pairs split their keys, as plan_forward does.
  if (p.decode && z.B * z.H < kSplitBelowHeads)
    p.kv_splits = std::clamp<int64_t>(max_k / kSplitKeys, 1, kMaxSplits);
  p.num_threads = get_num_threads();

  // The kernels' preconditions. The SIMD forward reads f32 and bf16 blocks (kernels/cpu/
  // dispatch.cpp): its tiled path packs every key tile out of them (nothing lies in place)
  // and multiplies on vdpbf16ps when q and the cache are bf16 and the ISA has it.
  p.paged = true;
  p.k.dtype = p.v.dtype = p.paged_cache.dtype == KvCacheDType::kBF16 ? DType::kBF16 : DType::kF32;  // the element type
  p.kv_tiles_in_place = false;
  p.keys_maskable = false;  // no mask or bias over a cache
  p.bf16_dot = active_isa_traits().bf16_dot && q.dtype == DType::kBF16 && p.paged_cache.dtype == KvCacheDType::kBF16;
  return p;
}

}  // namespace multihead::detail
