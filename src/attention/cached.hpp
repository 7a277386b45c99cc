// Attention over the paged KV cache (include/multihead/attention_cached.hpp): the checks
// of a call (validate_cached.cpp) and its plan for the paged kernels (plan_cached.cpp).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kernels/paged_params.hpp"
#include "multihead/attention_cached.hpp"

namespace multihead::detail {

// Sizes established by validation, in DESIGN.md letters.
struct CachedSizes {
  int64_t B = 0, Lq = 0, H = 0, Hkv = 0, D = 0, Dv = 0;
  std::vector<int64_t> lengths;  // per sequence: cached tokens before the call's append
  bool append = false;           // k_new and v_new given
};

// Every rule of the cached form except what KvCache::append checks itself (the blocks
// the append takes, int8 finiteness), which it checks before writing: q, seqs, k_new,
// v_new, out, lse, the options (those that make no sense over a cache are
// InvalidArgument naming them), rotary. Writes nothing.
CachedSizes validate_cached(const TensorView& q, const KvCache& cache, std::span<const int64_t> seqs,
                            const ForwardOutputs& outputs, const AttentionOptions& options,
                            const CachedAttentionInputs& inputs);

// The kernel's params once the append is done (q: the rotated queries when rotary is on).
PagedParams plan_cached(const CachedSizes& sizes, const TensorView& q, const KvCache& cache,
                        std::span<const int64_t> seqs, const ForwardOutputs& outputs,
                        const AttentionOptions& options);

}  // namespace multihead::detail
