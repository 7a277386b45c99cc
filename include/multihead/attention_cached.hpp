// Attention over the paged KV cache (docs/CONTRACT.md, "Attention over the cache"): the
// keys and values of each query's sequence are read from a KvCache's blocks where they
// lie (bf16 and int8 widened in registers), optionally after appending new tokens.
//
//   q (B, Lq, H, D) f32 or bf16; seqs: B live sequence ids of `cache`
//   k_new (B, Lq, Hkv, D), v_new (B, Lq, Hkv, Dv): optional, appended to seqs[b] first
//   out (B, Lq, H, Dv) any float dtype; lse (B, H, Lq) f32, optional
//
// Sequence b has Lk_b cached tokens (after the append). The diagonal is bottom-right:
// query i sits at absolute position Lk_b - Lq + i, so with options.causal ==
// kBottomRight it sees keys j <= i + Lk_b - Lq (decoding: the last query sees every key).
// kNone: no causal mask (windows and ALiBi still use that diagonal). kTopLeft is rejected.
// Scores support scale, softcap, window, alibi_slopes and sinks exactly as in
// attention_forward. mask, bias, seqlens_k, cu_seqlens_q/k and dropout make no sense over
// a cache and are InvalidArgument errors naming the option; so are probs and head_stats.
//
// Rotary (rotary_dim > 0): q and k_new are rotated (apply_rotary's arithmetic, see
// rotary.hpp) at absolute positions (length of seqs[b] before the append) + i before k_new
// is stored; cached keys are taken as already rotated.
//
// Every check, the cache's block count included, happens before anything is appended or
// written: a call that throws multihead::Error leaves the cache and the outputs byte for
// byte as they were. Results are bitwise identical for any thread count.
#pragma once

#include <cstdint>
#include <optional>
#include <span>

#include "multihead/attention.hpp"
#include "multihead/kv_cache.hpp"
#include "multihead/tensor.hpp"

namespace multihead {

struct CachedAttentionInputs {
  std::optional<TensorView> k_new{};  // (B, Lq, Hkv, D), f32 or bf16
  std::optional<TensorView> v_new{};  // (B, Lq, Hkv, Dv), f32 or bf16; with k_new only
  int64_t rotary_dim = 0;             // 0 = off; else even, <= D
  double rotary_base = 10000.0;
  bool rotary_interleaved = false;
};

void attention_forward_cached(const TensorView& q, KvCache& cache, std::span<const int64_t> seqs,
                              const ForwardOutputs& outputs, const AttentionOptions& options = {},
                              const CachedAttentionInputs& inputs = {});

// Allocating form: out has q's dtype, lse is (B, H, Lq) f32.
AttentionResult attention_forward_cached(const TensorView& q, KvCache& cache, std::span<const int64_t> seqs,
                                         const AttentionOptions& options = {},
                                         const CachedAttentionInputs& inputs = {});

}  // namespace multihead
