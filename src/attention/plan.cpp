#include "attention/plan.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "core/dtype_limits.hpp"
#include "kernels/kernels.hpp"
#include "multihead/threads.hpp"

namespace multihead::detail {

namespace {

Activation activation(const TensorView& t) {
  return {t.data, t.dtype, t.strides[0], t.strides[1], t.strides[2]};
}

// Right-aligns a rank <= 4 view to (B, H, Lq, Lk); size-1 dims get stride 0.
Broadcast4 broadcast4(const TensorView& t) {
  int64_t strides[4] = {0, 0, 0, 0};
  for (int d = 0; d < t.rank; ++d) strides[4 - t.rank + d] = t.shape[d] == 1 ? 0 : t.strides[d];
  return {t.data, t.dtype, strides[0], strides[1], strides[2], strides[3]};
}

}  // namespace

AttentionParams plan_forward(const ProblemSizes& s, const TensorView& q, const TensorView& k,
                             const TensorView& v, const ForwardOutputs& outputs, const AttentionOptions& o,
                             PlanFor plan_for) {
  AttentionParams p;
  p.B = s.B, p.Lq = s.Lq, p.Lk = s.Lk, p.H = s.H, p.Hkv = s.Hkv, p.D = s.D, p.Dv = s.Dv;
  p.group = s.Hkv > 0 ? s.H / s.Hkv : 1;
  p.extra_keys = s.extra_keys;
  p.q = activation(q), p.k = activation(k), p.v = activation(v);
  p.scale = o.scale ? *o.scale : 1.0f / std::sqrt(float(s.D));
  p.softcap = o.softcap;

  p.window_left = window_bound(o.window.left, s.Lq + s.Lk);
  p.window_right = window_bound(o.window.right, s.Lq + s.Lk);
  if (o.causal != CausalAlign::kNone) p.window_right = 0;  // j <= i + kv_offset, and the window's own bound is >= 0
  if (o.mask) p.mask = broadcast4(*o.mask);
  if (o.bias) {
    p.bias = broadcast4(*o.bias);
    p.bias_masked_at = lowest_finite(o.bias->dtype);
  }
  if (o.alibi_slopes) p.alibi_slopes = static_cast<const float*>(o.alibi_slopes->data), p.alibi_stride = o.alibi_slopes->strides[0];
  p.dropout_p = o.dropout_p;
  p.dropout_seed = o.dropout_seed;
  if (o.sinks) p.sinks = static_cast<const float*>(o.sinks->data), p.sinks_stride = o.sinks->strides[0];

  // Sequences: the diagonal is top-left only for causal top-left; bottom-right otherwise
  // (explicit bottom-right, a window without causal, and ALiBi's distances).
  const bool top_left = o.causal == CausalAlign::kTopLeft;
  p.seqs.resize(size_t(s.num_seqs));
  for (int64_t b = 0; b < s.num_seqs; ++b) {
    SequenceSpan& span = p.seqs[size_t(b)];
    if (s.varlen) {
      span.batch = 0;
      span.q_begin = i32_at(*o.cu_seqlens_q, b);
      span.q_len = i32_at(*o.cu_seqlens_q, b + 1) - span.q_begin;
      span.k_begin = i32_at(*o.cu_seqlens_k, b);
      span.k_len = i32_at(*o.cu_seqlens_k, b + 1) - span.k_begin - s.extra_keys;
      span.k_extra_begin = span.k_len;
    } else {
      span.batch = b;
      span.q_len = s.Lq;
      span.k_len = o.seqlens_k ? i32_at(*o.seqlens_k, b) : s.Lk - s.extra_keys;
      span.k_extra_begin = s.Lk - s.extra_keys;  // after the padding gap
    }
    span.k_extra = s.extra_keys;
    // The diagonal comes from the input keys: extra keys never shift it.
    span.kv_offset = top_left ? 0 : span.k_len - span.q_len;
  }

  p.out = activation(outputs.out);
  if (outputs.lse) {
    p.lse = static_cast<float*>(outputs.lse->data);
    p.lse_stride_b = outputs.lse->strides[0], p.lse_stride_h = outputs.lse->strides[1], p.lse_stride_i = outputs.lse->strides[2];
  }
  if (outputs.probs) {
    const TensorView& t = *outputs.probs;
    p.probs = static_cast<float*>(t.data);
    p.probs_stride_b = t.strides[0], p.probs_stride_h = t.strides[1], p.probs_stride_i = t.strides[2], p.probs_stride_j = t.strides[3];
  }
  if (outputs.head_stats) {
    const TensorView& t = *outputs.head_stats;
    p.head_stats = static_cast<float*>(t.data);
    p.stats_stride_b = t.strides[0], p.stats_stride_h = t.strides[1], p.stats_stride_i = t.strides[2], p.stats_stride_k = t.strides[3];
  }

  p.tile_q = kTileQ;
  p.tile_k = kTileK;
  for (int64_t b = 0; b < s.num_seqs; ++b)
    for (int64_t h = 0; h < s.H; ++h)
      for (int64_t i0 = 0; i0 < p.seqs[size_t(b)].q_len; i0 += p.tile_q)
        p.q_items.push_back({int32_t(b), int32_t(h), i0, std::min(i0 + p.tile_q, p.seqs[size_t(b)].q_len)});
  // Group items carry ~item_rows rows in all: the group's heads times group_rows queries.
  const bool banded = p.window_left >= 0 || p.window_right >= 0;  // causal or windowed
  const bool wide = plan_for == PlanFor::kForward && !banded && p.D <= kWideTileMaxDim && p.Dv <= kWideTileMaxDim;
  const int64_t item_rows = wide ? kWideTileQ : kTileQ;
  p.group_rows = std::max<int64_t>(kDecodeQueries, item_rows / p.group);
  for (int64_t b = 0; b < s.num_seqs; ++b) {
    p.group_item_first.push_back(int64_t(p.group_items.size()));
    for (int64_t h = 0; h < s.Hkv; ++h)
      for (int64_t i0 = 0; i0 < p.seqs[size_t(b)].q_len; i0 += p.group_rows)
        p.group_items.push_back(
            {int32_t(b), int32_t(h), i0, std::min(i0 + p.group_rows, p.seqs[size_t(b)].q_len)});
  }
  // Decode calls with few (sequence, head) pairs would leave cores idle: split each item's
  // keys into chunks of >= kSplitKeys, fixed by shape (never by thread count, so the bits
  // do not depend on it; nor by Hkv, so GQA and MHA split alike).
  int64_t max_q = 0, max_k = 0;
  for (const SequenceSpan& span : p.seqs)
    max_q = std::max(max_q, span.q_len), max_k = std::max(max_k, span.k_len + span.k_extra);
  p.decode = max_q <= kDecodeQueries;
  if (p.decode && s.num_seqs * s.H < kSplitBelowHeads)
    p.kv_splits = std::clamp<int64_t>(max_k / kSplitKeys, 1, kMaxSplits);
  p.num_threads = get_num_threads();

  // The kernels' preconditions, decided once here (the SIMD ones for the active ISA).
  const IsaTraits isa = active_isa_traits();
  p.scores_plain = p.softcap <= 0.0f && !p.bias.data && !p.alibi_slopes && !p.mask.data;
  p.keys_maskable = p.mask.data || p.bias.data;
  p.bf16_dot = isa.bf16_dot && p.q.dtype == DType::kBF16;
  p.kv_tiles_in_place = p.k.dtype == DType::kF32;
  p.dq_keys_in_place = p.kv_tiles_in_place && p.D % (2 * isa.float_lanes) == 0 && !p.keys_maskable;
  const int64_t lanes = isa.float_lanes;
  const bool whole_vectors = p.Dv % lanes == 0 && p.out.stride_b % lanes == 0 && p.out.stride_l % lanes == 0 &&
                             p.out.stride_h % lanes == 0 && reinterpret_cast<uintptr_t>(p.out.data) % 64 == 0;
  p.stream_output = isa.simd && p.out.dtype == DType::kF32 && whole_vectors &&
                    p.B * p.Lq * p.H * p.Dv * int64_t(sizeof(float)) >= kStreamOutputBytes;
  return p;
}

BackwardParams plan_backward(const AttentionParams& p, const TensorView& dout, const BackwardOutputs& grads,
                             const AttentionOptions& o, bool nonfinite_inputs) {
  BackwardParams g;
  g.portable = !active_isa_traits().simd || nonfinite_inputs;
  g.dout = activation(dout);
  g.dq = activation(grads.dq), g.dk = activation(grads.dk), g.dv = activation(grads.dv);
  // dk/dv items cover every key row of each sequence's k tensor range (padding included:
  // padded keys get zero gradients). Extra keys get items of their own after the input
  // keys' (an item never straddles k_extra_begin): the kernels run those on extra_span.
  for (size_t b = 0; b < p.seqs.size(); ++b) {
    const SequenceSpan& span = p.seqs[b];
    const int64_t rows = span.k_extra_begin, extra_end = span.k_extra_begin + span.k_extra;
    for (int64_t h = 0; h < p.Hkv; ++h) {
      g.kv_item_first.push_back(int64_t(g.kv_items.size()));
      for (int64_t j0 = 0; j0 < rows; j0 += p.tile_k)
        g.kv_items.push_back({int32_t(b), int32_t(h), j0, std::min(j0 + p.tile_k, rows)});
      for (int64_t j0 = rows; j0 < extra_end; j0 += p.tile_k)
        g.kv_items.push_back({int32_t(b), int32_t(h), j0, std::min(j0 + p.tile_k, extra_end)});
    }
  }
  g.kv_item_first.push_back(int64_t(g.kv_items.size()));
  if (grads.dbias) {
    const TensorView& t = *grads.dbias;
    const TensorView& bias = *o.bias;
    int64_t strides[4] = {0, 0, 0, 0};
    bool reduce[4] = {true, true, true, true};
    for (int d = 0; d < t.rank; ++d) {
      strides[4 - t.rank + d] = t.strides[d];
      reduce[4 - t.rank + d] = bias.shape[d] == 1;  // dims the bias lacks are reduced too
    }
    g.dbias = static_cast<float*>(t.data);
    g.dbias_stride_b = strides[0], g.dbias_stride_h = strides[1], g.dbias_stride_i = strides[2], g.dbias_stride_j = strides[3];
    g.dbias_reduce_b = reduce[0], g.dbias_reduce_h = reduce[1], g.dbias_reduce_i = reduce[2], g.dbias_reduce_j = reduce[3];
    // Portable: blocks of (head, tile_q rows); SIMD: blocks of (kv head, one group item's
    // rows), the rows the SIMD backward packs and scores together.
    const bool simd = !g.portable;
    const int64_t heads = simd ? p.Hkv : p.H, rows = simd ? p.group_rows : p.tile_q;
    for (int64_t b = 0; b < (g.dbias_reduce_b ? 1 : p.B); ++b)
      for (int64_t h = 0; h < (g.dbias_reduce_h ? 1 : heads); ++h) {
        if (g.dbias_reduce_i) {
          g.bias_items.push_back({int32_t(b), int32_t(h), 0, p.Lq});
          continue;
        }
        for (int64_t i0 = 0; i0 < p.Lq; i0 += rows)
          g.bias_items.push_back({int32_t(b), int32_t(h), i0, std::min(i0 + rows, p.Lq)});
      }
  }
  if (grads.dsinks) g.dsinks = static_cast<float*>(grads.dsinks->data), g.dsinks_stride = grads.dsinks->strides[0];
  return g;
}

}  // namespace multihead::detail
